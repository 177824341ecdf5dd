//! Reads one `.pth` with our reader (sae_pth::read_state_dict, the repository
//! /work/main commit 00212a8) and prints the same canonical summary as burnrd.
//!
//! Usage: oursrd FILE
//!   OK <n> / T\t<key>\t<dtype>\t<shape>\t<fnv1a64 of LE bytes>\t<nbytes>   (sorted by key)
//!   ERR\tread\t<message> (exit 2)   PANIC\t<message @ location> (exit 3)

use sae_pth::{PthData, read_state_dict};
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

fn le_bytes(d: &PthData) -> Vec<u8> {
    match d {
        PthData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        PthData::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        PthData::F16(v) | PthData::BF16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        PthData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        PthData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        PthData::U8(v) => v.clone(),
        PthData::Bool(v) => v.iter().map(|&b| b as u8).collect(),
        #[allow(unreachable_patterns)]
        _ => Vec::new(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 2 {
        eprintln!("usage: oursrd FILE");
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
    let path = std::path::PathBuf::from(&args[1]);
    let res = panic::catch_unwind(AssertUnwindSafe(|| read_state_dict(&path)));
    for p in PANICS.lock().map(|p| p.clone()).unwrap_or_default() {
        println!("HOOKPANIC\t{p}");
    }
    match res {
        Ok(Ok(sd)) => {
            let mut rows: Vec<_> = sd.entries.iter().collect();
            rows.sort_by(|a, b| a.0.cmp(&b.0));
            println!("OK {}", rows.len());
            for (k, t) in rows {
                let b = le_bytes(&t.data);
                let shape: Vec<String> = t.shape.iter().map(|x| x.to_string()).collect();
                println!(
                    "T\t{}\t{}\t{}\t{:016x}\t{}",
                    one_line(k),
                    t.dtype_name(),
                    shape.join(","),
                    fnv1a(&b),
                    b.len()
                );
            }
        }
        Ok(Err(e)) => {
            println!("ERR\tread\t{}", one_line(&e.to_string()));
            std::process::exit(2);
        }
        Err(_) => {
            let p = PANICS.lock().map(|p| p.last().cloned()).ok().flatten();
            println!("PANIC\t{}", p.unwrap_or_default());
            std::process::exit(3);
        }
    }
}
