//! The gemm-based convolution against candle's `conv2d` (forward, and backward where candle's
//! works: square inputs) and against central finite differences of a direct f64 convolution
//! (non-square inputs, where candle's backward can fail: 9×6 at stride 2 is a shape error).

use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use simclr_model::conv::{conv2d, conv2d_im2col};

/// A convolution case: batch, in channels, height, width, out channels, kernel, stride,
/// padding.
#[derive(Clone, Copy, Debug)]
struct Case {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
    s: usize,
    p: usize,
}

const fn case(
    n: usize,
    c: usize,
    (h, w): (usize, usize),
    o: usize,
    k: usize,
    s: usize,
    p: usize,
) -> Case {
    Case {
        n,
        c,
        h,
        w,
        o,
        k,
        s,
        p,
    }
}

/// 1×1, 3×3 and 7×7 kernels, strides 1 and 2, padding 0, 1 and 3, 1 to 64 channels, batches
/// of 1 to 5 (small outputs stack several images per gemm, the last group partial; large ones
/// split into row tiles), square and non-square inputs.
const CASES: &[Case] = &[
    case(1, 1, (5, 5), 1, 1, 1, 0),
    case(2, 3, (8, 8), 4, 3, 1, 1),
    case(2, 3, (7, 5), 4, 3, 1, 1),
    case(3, 16, (9, 9), 8, 3, 2, 1),
    case(2, 16, (9, 6), 8, 3, 2, 1),
    case(4, 8, (7, 5), 16, 1, 2, 0),
    case(4, 8, (8, 8), 16, 1, 2, 0),
    case(2, 64, (4, 4), 32, 3, 1, 1),
    case(2, 5, (11, 11), 6, 7, 2, 3),
    case(1, 3, (13, 9), 4, 7, 2, 3),
    case(4, 64, (8, 8), 64, 1, 1, 0),
    case(3, 4, (6, 10), 5, 3, 2, 0),
    case(2, 2, (3, 3), 3, 3, 1, 0),
    case(5, 4, (3, 3), 6, 3, 1, 1),
    case(5, 6, (3, 2), 4, 1, 1, 0),
    case(4, 8, (2, 2), 8, 3, 1, 1),
    case(3, 2, (4, 7), 3, 7, 1, 3),
    // Kernel taps that never land inside the input.
    case(2, 3, (2, 3), 4, 7, 1, 3),
    case(2, 3, (3, 3), 4, 7, 2, 3),
    // More than 256 output pixels: one gemm per tile of output rows, the last tile partial.
    case(1, 2, (40, 23), 3, 3, 1, 1),
    case(2, 2, (36, 36), 3, 3, 1, 1),
    case(1, 2, (45, 37), 3, 7, 2, 3),
    case(2, 4, (20, 17), 5, 1, 1, 0),
    case(2, 4, (34, 34), 5, 1, 2, 0),
    // Stride-1 3×3 "same" convolutions at least 24 columns wide run on shifted views of
    // the padded image: one tile, and several (the last partial) for the forward and weight
    // gradient (many output channels) and for the input gradient (many input channels).
    case(2, 16, (26, 26), 24, 3, 1, 1),
    case(2, 4, (12, 25), 6, 3, 1, 1),
    case(1, 12, (40, 24), 160, 3, 1, 1),
    case(1, 160, (40, 24), 12, 3, 1, 1),
    // Winograd F(2×2, 3×3) (at least 32 channels in and out, channels × width at least
    // 1024): images grouped per gemm (the last group partial), odd sides (partial tiles),
    // one image in two bands of tile rows, a single tile row.
    case(3, 256, (4, 4), 256, 3, 1, 1),
    case(2, 33, (9, 33), 40, 3, 1, 1),
    case(1, 32, (33, 35), 32, 3, 1, 1),
    case(2, 64, (3, 17), 64, 3, 1, 1),
    case(2, 64, (16, 16), 64, 3, 1, 1),
];

fn randn(shape: &[usize], seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..shape.iter().product::<usize>())
        .map(|_| StandardNormal.sample(&mut rng))
        .collect()
}

fn tensor(shape: &[usize], seed: u64) -> Tensor {
    Tensor::from_vec(randn(shape, seed), shape, &Device::Cpu).unwrap()
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Max |got − want| ≤ `tol` · max(1, max |want|).
fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let diff = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let scale = want.iter().map(|v| v.abs()).fold(1f32, f32::max);
    assert!(
        diff <= tol * scale,
        "{what}: max difference {diff} (scale {scale})"
    );
}

/// `(x, w, r)` for a case: input, weight, and the output weights `r` of the loss `Σ y·r`.
fn operands(cs: &Case, seed: u64) -> (Tensor, Tensor, Tensor) {
    let x = tensor(&[cs.n, cs.c, cs.h, cs.w], seed);
    let w = tensor(&[cs.o, cs.c, cs.k, cs.k], seed + 1);
    let (oh, ow) = out_hw(cs);
    let r = tensor(&[cs.n, cs.o, oh, ow], seed + 2);
    (x, w, r)
}

fn out_hw(cs: &Case) -> (usize, usize) {
    (
        (cs.h + 2 * cs.p - cs.k) / cs.s + 1,
        (cs.w + 2 * cs.p - cs.k) / cs.s + 1,
    )
}

/// Gradients of `Σ conv(x, w)·r` with respect to `x` and `w`, by `conv`.
fn grads(
    x: &Tensor,
    w: &Tensor,
    r: &Tensor,
    conv: impl Fn(&Tensor, &Tensor) -> Tensor,
) -> (Vec<f32>, Vec<f32>) {
    let (xv, wv) = (Var::from_tensor(x).unwrap(), Var::from_tensor(w).unwrap());
    let loss = (conv(xv.as_tensor(), wv.as_tensor()) * r)
        .unwrap()
        .sum_all()
        .unwrap();
    let g = loss.backward().unwrap();
    (
        to_vec(g.get(xv.as_tensor()).expect("input gradient")),
        to_vec(g.get(wv.as_tensor()).expect("weight gradient")),
    )
}

/// Every product of the convolution by definition: `f(y, x, w)` with the flat indices of an
/// output, the input scalar and the weight it multiplies (taps outside the input skipped).
fn for_each_tap(cs: &Case, mut f: impl FnMut(usize, usize, usize)) {
    let (oh, ow) = out_hw(cs);
    for n in 0..cs.n {
        for o in 0..cs.o {
            for i in 0..oh {
                for j in 0..ow {
                    let yi = ((n * cs.o + o) * oh + i) * ow + j;
                    for c in 0..cs.c {
                        for ki in 0..cs.k {
                            for kj in 0..cs.k {
                                let ih = (i * cs.s + ki) as isize - cs.p as isize;
                                let iw = (j * cs.s + kj) as isize - cs.p as isize;
                                if ih < 0 || iw < 0 || ih >= cs.h as isize || iw >= cs.w as isize {
                                    continue;
                                }
                                let xi = ((n * cs.c + c) * cs.h + ih as usize) * cs.w + iw as usize;
                                let wi = ((o * cs.c + c) * cs.k + ki) * cs.k + kj;
                                f(yi, xi, wi);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The convolution by definition, in f64: `[N, C, H, W]` ⊛ `[O, C, K, K]`.
fn direct(x: &[f64], w: &[f64], cs: &Case) -> Vec<f64> {
    let (oh, ow) = out_hw(cs);
    let mut y = vec![0.0; cs.n * cs.o * oh * ow];
    for_each_tap(cs, |yi, xi, wi| y[yi] += x[xi] * w[wi]);
    y
}

/// Gradients of `Σ conv(x, w)·r` by definition, in f64: `(∂/∂x, ∂/∂w)`.
fn direct_grads(x: &[f64], w: &[f64], r: &[f64], cs: &Case) -> (Vec<f64>, Vec<f64>) {
    let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
    for_each_tap(cs, |yi, xi, wi| {
        dx[xi] += r[yi] * w[wi];
        dw[wi] += r[yi] * x[xi];
    });
    (dx, dw)
}

#[test]
fn forward_matches_candle_and_the_definition() {
    for (i, cs) in CASES.iter().enumerate() {
        let (x, w, _) = operands(cs, 10 * i as u64);
        let ours = conv2d(&x, &w, cs.s, cs.p).unwrap();
        let (oh, ow) = out_hw(cs);
        assert_eq!(ours.dims(), &[cs.n, cs.o, oh, ow], "{cs:?}");
        let candle = x.conv2d(&w, cs.p, cs.s, 1, 1).unwrap();
        assert_close(&to_vec(&ours), &to_vec(&candle), 1e-4, &format!("{cs:?}"));
        let f64s = |t: &Tensor| to_vec(t).iter().map(|&v| v as f64).collect::<Vec<_>>();
        let want: Vec<f32> = direct(&f64s(&x), &f64s(&w), cs)
            .iter()
            .map(|&v| v as f32)
            .collect();
        assert_close(&to_vec(&ours), &want, 1e-4, &format!("{cs:?} direct"));
    }
}

/// Winograd F(2×2, 3×3)'s rounding error against the f64 convolution by definition, forward
/// and both gradients, is that of a direct f32 convolution: measured at 2.5–5.7e-7 of the
/// result's scale on these cases (candle's direct convolution: 4.3–7.0e-7); asserted below
/// 1e-6.
#[test]
fn winograd_error_is_that_of_a_direct_convolution() {
    // The rule of `conv::Geom::winograd`.
    let winograd = |cs: &Case| {
        let ch = cs.c.min(cs.o);
        cs.k == 3 && cs.s == 1 && cs.p == 1 && ch >= 32 && ch * cs.w >= 1024
    };
    let mut checked = 0;
    for (i, cs) in CASES.iter().enumerate().filter(|(_, cs)| winograd(cs)) {
        let (x, w, r) = operands(cs, 400 + 10 * i as u64);
        let y = to_vec(&conv2d(&x, &w, cs.s, cs.p).unwrap());
        let (dx, dw) = grads(&x, &w, &r, |x, w| conv2d(x, w, cs.s, cs.p).unwrap());
        let f64s = |t: &Tensor| to_vec(t).iter().map(|&v| v as f64).collect::<Vec<_>>();
        let (xs, ws, rs) = (f64s(&x), f64s(&w), f64s(&r));
        let f32s = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<_>>();
        let (wdx, wdw) = direct_grads(&xs, &ws, &rs, cs);
        assert_close(
            &y,
            &f32s(direct(&xs, &ws, cs)),
            1e-6,
            &format!("{cs:?} forward"),
        );
        assert_close(&dx, &f32s(wdx), 1e-6, &format!("{cs:?} input gradient"));
        assert_close(&dw, &f32s(wdw), 1e-6, &format!("{cs:?} weight gradient"));
        checked += 1;
    }
    assert!(checked >= 4, "the Winograd cases left the table");
}

#[test]
fn gradients_match_candle_on_square_inputs() {
    for (i, cs) in CASES.iter().enumerate().filter(|(_, cs)| cs.h == cs.w) {
        let (x, w, r) = operands(cs, 100 + 10 * i as u64);
        let (s, p) = (cs.s, cs.p);
        let (dx, dw) = grads(&x, &w, &r, |x, w| conv2d(x, w, s, p).unwrap());
        let (cdx, cdw) = grads(&x, &w, &r, |x, w| x.conv2d(w, p, s, 1, 1).unwrap());
        assert_close(&dx, &cdx, 1e-4, &format!("{cs:?} input gradient"));
        assert_close(&dw, &cdw, 1e-4, &format!("{cs:?} weight gradient"));
    }
}

#[test]
fn gradients_match_finite_differences_on_non_square_inputs() {
    let eps = 1e-3;
    for (i, cs) in CASES
        .iter()
        .enumerate()
        .filter(|(_, cs)| cs.h != cs.w && cs.c * cs.o <= 128)
    {
        let (x, w, r) = operands(cs, 200 + 10 * i as u64);
        let (s, p) = (cs.s, cs.p);
        let (dx, dw) = grads(&x, &w, &r, |x, w| conv2d(x, w, s, p).unwrap());
        let f64s = |t: &Tensor| to_vec(t).iter().map(|&v| v as f64).collect::<Vec<_>>();
        let (xs, ws, rs) = (f64s(&x), f64s(&w), f64s(&r));
        let loss = |x: &[f64], w: &[f64]| -> f64 {
            direct(x, w, cs).iter().zip(&rs).map(|(y, r)| y * r).sum()
        };
        let central = |v: &[f64], at: usize, f: &dyn Fn(&[f64]) -> f64| -> f32 {
            let (mut a, mut b) = (v.to_vec(), v.to_vec());
            a[at] += eps;
            b[at] -= eps;
            ((f(&a) - f(&b)) / (2.0 * eps)) as f32
        };
        // Every element of small tensors, about 200 spread over the large ones.
        let probe = |len: usize| (0..len).step_by(len.div_ceil(200)).chain([len - 1]);
        let at_x: Vec<usize> = probe(xs.len()).collect();
        let at_w: Vec<usize> = probe(ws.len()).collect();
        let fdx: Vec<f32> = at_x
            .iter()
            .map(|&at| central(&xs, at, &|x| loss(x, &ws)))
            .collect();
        let fdw: Vec<f32> = at_w
            .iter()
            .map(|&at| central(&ws, at, &|w| loss(&xs, w)))
            .collect();
        let pick = |v: &[f32], at: &[usize]| at.iter().map(|&i| v[i]).collect::<Vec<_>>();
        let what = format!("{cs:?} input gradient");
        assert_close(&pick(&dx, &at_x), &fdx, 1e-4, &what);
        let what = format!("{cs:?} weight gradient");
        assert_close(&pick(&dw, &at_w), &fdw, 1e-4, &what);
    }
}

/// The device-generic path (what runs on CUDA: candle's im2col forward, gradients as
/// im2col convolutions) against the CPU op on every case, square or not, forward and both
/// gradients, on the same inputs.
#[test]
fn the_im2col_path_matches_the_cpu_op_forward_and_backward() {
    for (i, cs) in CASES.iter().enumerate() {
        let (x, w, r) = operands(cs, 300 + 10 * i as u64);
        let (s, p) = (cs.s, cs.p);
        let y = to_vec(&conv2d_im2col(&x, &w, s, p).unwrap());
        let want = to_vec(&conv2d(&x, &w, s, p).unwrap());
        assert_close(&y, &want, 1e-5, &format!("{cs:?} forward"));
        let (dx, dw) = grads(&x, &w, &r, |x, w| conv2d_im2col(x, w, s, p).unwrap());
        let (fdx, fdw) = grads(&x, &w, &r, |x, w| conv2d(x, w, s, p).unwrap());
        assert_close(&dx, &fdx, 1e-4, &format!("{cs:?} input gradient"));
        assert_close(&dw, &fdw, 1e-4, &format!("{cs:?} weight gradient"));
    }
    // Padding as large as the kernel is refused rather than computed wrongly.
    let (x, w, _) = operands(&case(1, 2, (5, 5), 2, 1, 1, 0), 1);
    assert!(conv2d_im2col(&x, &w, 1, 1).is_err());
}

#[test]
fn non_contiguous_inputs_other_dtypes_and_non_square_kernels() {
    let cs = case(2, 3, (5, 7), 4, 3, 2, 1);
    let (x, w, _) = operands(&cs, 7);
    let want = to_vec(&x.conv2d(&w, 1, 2, 1, 1).unwrap());
    // A transposed view of the transposed input, and a weight narrowed out of a larger one.
    let xt = x.transpose(2, 3).unwrap().contiguous().unwrap();
    let x_view = xt.transpose(2, 3).unwrap();
    assert!(!x_view.is_contiguous());
    let w_big = Tensor::cat(&[&w, &w], 0).unwrap();
    let w_view = w_big.narrow(0, cs.o, cs.o).unwrap();
    let got = to_vec(&conv2d(&x_view, &w_view, 2, 1).unwrap());
    assert_close(&got, &want, 1e-5, "non-contiguous");
    // f64 falls back to candle's convolution.
    let (x64, w64) = (
        x.to_dtype(DType::F64).unwrap(),
        w.to_dtype(DType::F64).unwrap(),
    );
    let got = conv2d(&x64, &w64, 2, 1).unwrap();
    assert_eq!(got.dtype(), DType::F64);
    let want64 = x64.conv2d(&w64, 1, 2, 1, 1).unwrap();
    assert_eq!(
        got.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
        want64.flatten_all().unwrap().to_vec1::<f64>().unwrap()
    );
    // So does a non-square kernel.
    let w32 = tensor(&[4, 3, 3, 2], 9);
    let got = to_vec(&conv2d(&x, &w32, 1, 1).unwrap());
    let want = to_vec(&x.conv2d(&w32, 1, 1, 1, 1).unwrap());
    assert_eq!(got, want);
}

#[test]
fn only_tracked_operands_get_gradients() {
    let cs = case(2, 3, (6, 6), 4, 3, 1, 1);
    let (x, w, r) = operands(&cs, 3);
    let wv = Var::from_tensor(&w).unwrap();
    let loss = (conv2d(&x, wv.as_tensor(), 1, 1).unwrap() * &r)
        .unwrap()
        .sum_all()
        .unwrap();
    let g = loss.backward().unwrap();
    assert!(g.get(&x).is_none());
    let (_, cdw) = grads(&x, &w, &r, |x, w| x.conv2d(w, 1, 1, 1, 1).unwrap());
    assert_close(
        &to_vec(g.get(wv.as_tensor()).unwrap()),
        &cdw,
        1e-4,
        "weight gradient",
    );
}

#[test]
fn bad_shapes_are_errors() {
    let x = tensor(&[1, 3, 4, 4], 0);
    assert!(conv2d(&x, &tensor(&[2, 4, 3, 3], 1), 1, 1).is_err()); // channels differ
    assert!(conv2d(&x, &tensor(&[2, 3, 7, 7], 1), 1, 1).is_err()); // kernel too large
    assert!(conv2d(&x, &tensor(&[2, 3, 3, 3], 1), 0, 1).is_err()); // zero stride
}
