//! The official channel formulas (`models/networks/encoder.py`, `generator.py`,
//! `stylegan2_layers.py::Discriminator`, `patch_discriminator.py`), with Python's rounding.
//!
//! These only serve to build a model from a preset. A checkpoint is always loaded with the
//! widths read from its tensors, because the formulas changed between code versions (the `nc`
//! cap, see `docs/checkpoints.md`).

/// Python 3's `round(x)`: halves go to the even neighbour (`round(204.5) == 204`).
pub fn py_round(x: f64) -> i64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && (r as i64) % 2 != 0 {
        (r - x.signum()) as i64
    } else {
        r as i64
    }
}

/// Encoder width of level `i`: `round(min(global_code_ch, int(round(steepness^(5+i)·capacity))))`.
pub fn encoder_nc(i: usize, global_code_ch: usize, steepness: f64, capacity: f64) -> usize {
    let raw = py_round(steepness.powi(5 + i as i32) * capacity);
    raw.min(global_code_ch as i64) as usize
}

/// Generator width `nf(j) = int(min(512, 128·2^(sp−j))·capacity)` (truncation).
pub fn generator_nf(j: usize, sp: usize, capacity: f64) -> usize {
    let base = 128f64 * 2f64.powi(sp as i32 - j as i32);
    (base.min(512.0) * capacity) as usize
}

/// Output width of head block `i` of `n`: `max(spatial_code_ch, round((i+1)/n · nf(0)))`.
pub fn generator_head(i: usize, n: usize, nf0: usize, spatial_code_ch: usize) -> usize {
    let w = py_round((i + 1) as f64 / n as f64 * nf0 as f64);
    (w.max(spatial_code_ch as i64)) as usize
}

/// StyleGAN2 discriminator width at resolution `res` with `channel_multiplier`
/// (`stylegan2_layers.py::Discriminator`: 16 and 32 px are both `min(512, int(512·m))`, which
/// is 512 for every official preset, m = 2, but not below m = 1).
pub fn discriminator_ch(res: usize, multiplier: f64) -> usize {
    let m = multiplier;
    let v = match res {
        4 | 8 => 512.0,
        16 | 32 => (512.0 * m).min(512.0),
        64 => 256.0 * m,
        128 => 128.0 * m,
        256 => 64.0 * m,
        512 => 32.0 * m,
        1024 => 16.0 * m,
        _ => panic!("no discriminator width for resolution {res}"),
    };
    v as usize
}

/// Patch discriminator width at resolution `res` (`m` = scale capacity, capped at `max_nc` at
/// the three lowest resolutions).
pub fn patch_ch(res: usize, m: f64, max_nc: usize) -> usize {
    let cap = max_nc as f64;
    let v = match res {
        4 => (256.0 * m).min(cap),
        8 => (128.0 * m).min(cap),
        16 => (64.0 * m).min(cap),
        32 => 32.0 * m,
        64 => 16.0 * m,
        128 => 8.0 * m,
        256 => 4.0 * m,
        512 => 2.0 * m,
        _ => panic!("no patch discriminator width for resolution {res}"),
    };
    v as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_rounding() {
        assert_eq!(py_round(204.5), 204);
        assert_eq!(py_round(205.5), 206);
        assert_eq!(py_round(409.6), 410);
        assert_eq!(py_round(2.5), 2);
        assert_eq!(py_round(3.2), 3);
    }

    #[test]
    fn discriminator_widths_follow_the_official_table() {
        let widths = |m: f64| -> Vec<usize> {
            [4, 8, 16, 32, 64, 128, 256]
                .iter()
                .map(|&r| discriminator_ch(r, m))
                .collect()
        };
        // The official presets (netD_scale_capacity 1).
        assert_eq!(widths(2.0), [512, 512, 512, 512, 512, 256, 128]);
        // netD_scale_capacity 0.125 (the 128-px benchmark config): 16 and 32 px shrink too.
        assert_eq!(widths(0.25), [512, 512, 128, 128, 64, 32, 16]);
        // Truncation, as Python's int(): 512·0.3 = 153.6 → 153.
        assert_eq!(discriminator_ch(32, 0.3), 153);
    }

    #[test]
    fn ffhq1024_widths_follow_the_spec_table() {
        // ffhq1024: E 13,26,51,102,205,410 | 819,1536 ; G heads 204,409; ups 409,409,409,204,102
        let nc: Vec<usize> = (0..8).map(|i| encoder_nc(i, 1536, 2.0, 0.4)).collect();
        assert_eq!(nc, [13, 26, 51, 102, 205, 410, 819, 1536]);
        let nf: Vec<usize> = (0..6).map(|j| generator_nf(j, 5, 0.8)).collect();
        assert_eq!(nf, [409, 409, 409, 409, 204, 102]);
        assert_eq!(generator_head(0, 2, nf[0], 8), 204);
        assert_eq!(generator_head(1, 2, nf[0], 8), 409);
    }
}
