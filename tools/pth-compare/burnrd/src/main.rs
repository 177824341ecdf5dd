//! Reads one `.pth` with burn-store 0.22.1 and prints a canonical summary.
//!
//! Usage: burnrd (store|storeraw|reader) FILE
//!   store : burn_store::PytorchStore::from_file(FILE).get_all_tensors(), then
//!           burn_store::bridge::to_data(&t) on every tensor (what `apply_to` draws).
//!           Defaults, i.e. map_indices_contiguous(true): `convs.4.x` becomes `convs.1.x`.
//!   storeraw: the same with .map_indices_contiguous(false) (keys as in the file).
//!   reader: burn_store::pytorch_reader::PytorchReader::new(FILE), then t.read() on every
//!           tensor of .tensors() (the lower-level reader, no panic guard of burn-store's).
//!
//! Output (stdout):
//!   OK <n>                                      then per tensor, sorted by key:
//!   T\t<key>\t<dtype>\t<shape,comma>\t<fnv1a64 of LE bytes>\t<nbytes>
//!   ERR\t<stage>\t<message>                      (exit 2)
//!   PANIC\t<message @ location>                  (exit 3)
//! Any panic observed by the hook (even one burn-store catches itself and converts to an
//! error) is also printed as `HOOKPANIC\t<message @ location>` on stdout.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Mutex;

static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn one_line(s: &str) -> String {
    let s: String = s.chars().map(|c| if c == '\n' || c == '\t' { ' ' } else { c }).collect();
    if s.len() > 400 {
        let mut end = 400;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s
    }
}

type Row = (String, String, Vec<usize>, Vec<u8>);

fn store_dtype(d: &burn_store::pytorch_reader::DType) -> String {
    use burn_store::pytorch_reader::DType as D;
    match d {
        D::F64 => "float64",
        D::F32 => "float32",
        D::F16 => "float16",
        D::BF16 => "bfloat16",
        D::I64 => "int64",
        D::I32 => "int32",
        D::I16 => "int16",
        D::I8 => "int8",
        D::U64 => "uint64",
        D::U32 => "uint32",
        D::U16 => "uint16",
        D::U8 => "uint8",
        D::Bool => "bool",
    }
    .to_string()
}

fn burn_dtype(d: &str) -> String {
    // burn_core DType Debug names -> torch names
    match d {
        "F64" => "float64",
        "F32" => "float32",
        "F16" => "float16",
        "BF16" => "bfloat16",
        "I64" => "int64",
        "I32" => "int32",
        "I16" => "int16",
        "I8" => "int8",
        "U64" => "uint64",
        "U32" => "uint32",
        "U16" => "uint16",
        "U8" => "uint8",
        s if s.starts_with("Bool") => "bool",
        other => return format!("other:{other}"),
    }
    .to_string()
}

fn run_store(path: &str, contiguous: bool) -> Result<Vec<Row>, (String, String)> {
    use burn_store::{ModuleStore, PytorchStore};
    let mut store = PytorchStore::from_file(path);
    if !contiguous {
        store = store.map_indices_contiguous(false);
    }
    let all = store
        .get_all_tensors()
        .map_err(|e| ("open".to_string(), e.to_string()))?;
    let mut rows = Vec::new();
    for (key, t) in all.iter() {
        let data = burn_store::bridge::to_data(t)
            .map_err(|e| (format!("data:{key}"), e.to_string()))?;
        rows.push((
            key.clone(),
            burn_dtype(&format!("{:?}", data.dtype())),
            data.shape().iter().copied().collect(),
            data.as_bytes().to_vec(),
        ));
    }
    Ok(rows)
}

fn run_reader(path: &str) -> Result<Vec<Row>, (String, String)> {
    use burn_store::pytorch_reader::PytorchReader;
    let reader = PytorchReader::new(path).map_err(|e| ("open".to_string(), e.to_string()))?;
    let mut rows = Vec::new();
    for (key, t) in reader.tensors().iter() {
        let bytes = t.read().map_err(|e| (format!("data:{key}"), e.to_string()))?;
        rows.push((key.clone(), store_dtype(&t.dtype()), t.shape().to_vec(), bytes));
    }
    Ok(rows)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: burnrd (store|storeraw|reader) FILE");
        std::process::exit(64);
    }
    panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "<non-string payload>".into());
        let loc = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        if let Ok(mut p) = PANICS.lock() {
            p.push(format!("{} @ {}", one_line(&msg), loc));
        }
    }));
    let mode = args[1].clone();
    let path = args[2].clone();
    let res = panic::catch_unwind(AssertUnwindSafe(|| match mode.as_str() {
        "store" => run_store(&path, true),
        "storeraw" => run_store(&path, false),
        "reader" => run_reader(&path),
        _ => Err(("usage".into(), "bad mode".into())),
    }));
    for p in PANICS.lock().map(|p| p.clone()).unwrap_or_default() {
        println!("HOOKPANIC\t{p}");
    }
    match res {
        Ok(Ok(mut rows)) => {
            rows.sort_by(|a, b| a.0.cmp(&b.0));
            println!("OK {}", rows.len());
            for (k, d, s, b) in rows {
                let shape: Vec<String> = s.iter().map(|x| x.to_string()).collect();
                println!(
                    "T\t{}\t{}\t{}\t{:016x}\t{}",
                    one_line(&k),
                    d,
                    shape.join(","),
                    fnv1a(&b),
                    b.len()
                );
            }
        }
        Ok(Err((stage, msg))) => {
            println!("ERR\t{}\t{}", one_line(&stage), one_line(&msg));
            std::process::exit(2);
        }
        Err(_) => {
            let p = PANICS.lock().map(|p| p.last().cloned()).ok().flatten();
            println!("PANIC\t{}", p.unwrap_or_default());
            std::process::exit(3);
        }
    }
}
