//! Times one convolution's forward and backward passes (`simclr_model::conv::conv2d` on the
//! CPU): `bench_conv N C H O K STRIDE [REPEATS] [bf16]`, median milliseconds of each pass;
//! `bf16` runs the gemms in bf16 (`conv::set_bf16_gemm`).

use std::time::Instant;

use candle_core::{Device, Tensor, Var};

fn main() -> candle_core::Result<()> {
    let usage = "usage: bench_conv N C H O K STRIDE [REPEATS] [bf16]";
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let bf16 = args.last().is_some_and(|a| a == "bf16");
    if bf16 {
        args.pop();
    }
    simclr_model::conv::set_bf16_gemm(bf16)?;
    let a: Vec<usize> = args.iter().map(|s| s.parse().expect(usage)).collect();
    let [n, c, h, o, k, s] = a[..6] else {
        panic!("{usage}")
    };
    let reps = a.get(6).copied().unwrap_or(20);
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, c, h, h), &dev)?)?;
    let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, (o, c, k, k), &dev)?)?;
    let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
    for _ in 0..reps + 2 {
        let t = Instant::now();
        let y = simclr_model::conv::conv2d(x.as_tensor(), w.as_tensor(), s, k / 2)?;
        let t1 = t.elapsed();
        let t = Instant::now();
        let g = y.sum_all()?.backward()?;
        let t2 = t.elapsed();
        assert!(g.get(&x).is_some() && g.get(&w).is_some());
        fwd.push(t1.as_secs_f64() * 1e3);
        bwd.push(t2.as_secs_f64() * 1e3);
    }
    let median = |v: &mut Vec<f64>| {
        v.drain(..2);
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "n={n} c={c} h={h} o={o} k={k} s={s}: forward {:.2} ms, backward {:.2} ms",
        median(&mut fwd),
        median(&mut bwd)
    );
    Ok(())
}
