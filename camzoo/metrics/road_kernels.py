"""Compiled CPU kernels for the ROAD imputation's multigrid (``metrics/road.py``).

On the CPU the solver's cost is not arithmetic but memory passes: torch runs a masked 9-point
stencil as a depthwise convolution plus a few elementwise passes, each over the whole batch of
fields, and the coarse grids' variable stencils as 9 sliced ``addcmul`` passes. The kernels
here do each of those in one pass over the data, row by row (the rows stay in L1):

- ``fine_op``: ``out = base + dinv * (r + sign * A u)`` with the fine ROAD operator
  ``A u = m * (d * u - K * u)`` (``K``: the 3x3 neighbour weights 1/6, 1/12; zero outside);
- ``st9_op``: the same with a coarse grid's per-cell 9-point stencil ``S`` for ``A``;
- ``restrict``: ``P^T r`` and ``interp_add``: ``u += s * (P uc)``, the vertex-centred bilinear
  transfers of ``road._interp`` / ``road._restrict``.

Every optional argument (``r``, ``dinv``, ``base``) may be None. Fields are contiguous NCHW
``[N,C,h,w]``; masks and coefficients ``[N,1,h,w]`` (shared by an image's channels), the
stencil ``[N,9,h,w]`` (``road._OFFSETS`` order), the in-image weight sums ``d`` ``[h,w]``;
float32 or float64, all of one dtype, on the CPU.

The C source below is compiled once per machine with the system's C compiler (``cc``, or
``$CC``) into ``$CAMZOO_CACHE`` (default ``~/.cache/camzoo``; this user's temp folder where
that cannot be written), keyed by a hash of the source, the flags, the compiler's version and
the CPU, and loaded with :mod:`ctypes`; no Python package is added. Where no compiler works, or ``CAMZOO_ROAD_KERNELS=0``, :func:`available`
is False and ``road.py`` uses its torch operators (the same algorithm, the same results to
float32 rounding; tests/test_road.py checks both against scipy).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import Tensor

_TEMPLATE = r"""
/* one pass per row: t[x] = (A u)(y, x) for the fine ROAD operator */
static void fine_row_SUF(long W, const REAL *a, const REAL *u, const REAL *b,
                         const REAL *m, const REAL *d, REAL *t)
{
    const REAL w6 = (REAL)(1.0 / 6.0), w12 = (REAL)(1.0 / 12.0);
    if (W == 1) { t[0] = m[0] * (d[0] * u[0] - w6 * (a[0] + b[0])); return; }
    for (long x = 1; x < W - 1; x++) {
        REAL k = w6 * (a[x] + b[x] + u[x - 1] + u[x + 1])
               + w12 * (a[x - 1] + a[x + 1] + b[x - 1] + b[x + 1]);
        t[x] = m[x] * (d[x] * u[x] - k);
    }
    t[0] = m[0] * (d[0] * u[0] - (w6 * (a[0] + b[0] + u[1]) + w12 * (a[1] + b[1])));
    long e = W - 1;
    t[e] = m[e] * (d[e] * u[e] - (w6 * (a[e] + b[e] + u[e - 1]) + w12 * (a[e - 1] + b[e - 1])));
}

/* one pass per row: t[x] = sum_k S_k(y, x) u(y + dy_k, x + dx_k) */
static void st9_row_SUF(long W, const REAL *a, const REAL *u, const REAL *b,
                        const REAL *S, long plane, REAL *t)
{
    const REAL *s0 = S, *s1 = S + plane, *s2 = S + 2 * plane, *s3 = S + 3 * plane,
               *s4 = S + 4 * plane, *s5 = S + 5 * plane, *s6 = S + 6 * plane,
               *s7 = S + 7 * plane, *s8 = S + 8 * plane;
    if (W == 1) { t[0] = s1[0] * a[0] + s4[0] * u[0] + s7[0] * b[0]; return; }
    for (long x = 1; x < W - 1; x++)
        t[x] = s0[x] * a[x - 1] + s1[x] * a[x] + s2[x] * a[x + 1]
             + s3[x] * u[x - 1] + s4[x] * u[x] + s5[x] * u[x + 1]
             + s6[x] * b[x - 1] + s7[x] * b[x] + s8[x] * b[x + 1];
    t[0] = s1[0] * a[0] + s2[0] * a[1] + s4[0] * u[0] + s5[0] * u[1] + s7[0] * b[0] + s8[0] * b[1];
    long e = W - 1;
    t[e] = s0[e] * a[e - 1] + s1[e] * a[e] + s3[e] * u[e - 1] + s4[e] * u[e]
         + s6[e] * b[e - 1] + s7[e] * b[e];
}

/* out = base + dinv * (r + sign * t), each of base, dinv, r optional */
static void finish_row_SUF(long W, const REAL *t, REAL sign, const REAL *r, const REAL *dinv,
                           const REAL *base, REAL *out)
{
    if (r && dinv && base) {
        for (long x = 0; x < W; x++) out[x] = base[x] + dinv[x] * (r[x] + sign * t[x]);
    } else if (r && !dinv && !base) {
        for (long x = 0; x < W; x++) out[x] = r[x] + sign * t[x];
    } else {
        for (long x = 0; x < W; x++) {
            REAL v = sign * t[x];
            if (r) v += r[x];
            if (dinv) v *= dinv[x];
            if (base) v += base[x];
            out[x] = v;
        }
    }
}

/* kind 0: fine operator (coef = m [N,1,H,W], d [H,W]); kind 1: stencil (coef = S [N,9,H,W]).
   The N*C planes are split over nt threads (OpenMP, where compiled with it). */
static int op_SUF(int kind, long N, long C, long H, long W, const REAL *coef, const REAL *d,
                  const REAL *u, const REAL *r, const REAL *dinv, const REAL *base,
                  REAL sign, REAL *out, int nt)
{
    long plane = H * W;
    int failed = 0;
    PARALLEL(nt)
    {
        REAL *zero = (REAL *)calloc((size_t)W, sizeof(REAL));
        REAL *t = (REAL *)malloc((size_t)W * sizeof(REAL));
        if (!zero || !t) failed = 1;
        FOR
        for (long q = 0; q < N * C; q++) {
            if (!zero || !t) continue;
            long n = q / C, off = q * plane;
            const REAL *up = u + off;
            for (long y = 0; y < H; y++) {
                const REAL *row = up + y * W;
                const REAL *above = y > 0 ? row - W : zero;
                const REAL *below = y < H - 1 ? row + W : zero;
                if (kind == 0)
                    fine_row_SUF(W, above, row, below, coef + n * plane + y * W, d + y * W, t);
                else
                    st9_row_SUF(W, above, row, below, coef + n * 9 * plane + y * W, plane, t);
                long o = off + y * W, oc = n * plane + y * W;
                finish_row_SUF(W, t, sign, r ? r + o : 0, dinv ? dinv + oc : 0,
                               base ? base + o : 0, out + o);
            }
        }
        free(zero);
        free(t);
    }
    return failed;
}

int fine_op_SUF(long N, long C, long H, long W, const REAL *m, const REAL *d, const REAL *u,
                const REAL *r, const REAL *dinv, const REAL *base, double sign, REAL *out,
                int nt)
{
    return op_SUF(0, N, C, H, W, m, d, u, r, dinv, base, (REAL)sign, out, nt);
}

int st9_op_SUF(long N, long C, long H, long W, const REAL *S, const REAL *u, const REAL *r,
               const REAL *dinv, const REAL *base, double sign, REAL *out, int nt)
{
    return op_SUF(1, N, C, H, W, S, 0, u, r, dinv, base, (REAL)sign, out, nt);
}

/* the Galerkin probes' pick: S[n,k,Y,X] = Z[n, colour(Y + dy_k, X + dx_k), Y, X], colour(a, b)
   = (a mod 3) * 3 + (b mod 3) (road._galerkin) */
int pick_SUF(long N, long h, long w, const REAL *Z, REAL *S, int nt)
{
    long plane = h * w;
    PARALLEL(nt)
    {
        FOR
        for (long q = 0; q < N * 9; q++) {
            long n = q / 9, k = q % 9, dy = k / 3 - 1, dx = k % 3 - 1;
            const REAL *z = Z + n * 9 * plane;
            REAL *o = S + q * plane;
            for (long Y = 0; Y < h; Y++) {
                long cy = ((Y + dy) % 3 + 3) % 3 * 3;
                for (long j = 0; j < 3; j++) {  /* the columns X = j (mod 3): one colour */
                    const REAL *src = z + (cy + (j + dx + 3) % 3) * plane + Y * w;
                    REAL *dst = o + Y * w;
                    for (long X = j; X < w; X += 3) dst[X] = src[X];
                }
            }
        }
    }
    return 0;
}

/* P^T along one axis: weight of fine odd point 2I+1 towards coarse I (the last odd point of
   an even side has the single coarse neighbour I, weight 1) */
static REAL right_weight_SUF(long i, long n) { return (i == n - 1 && n % 2 == 0) ? 1 : (REAL)0.5; }

/* out [P,hc,wc] = P^T r, r [P,h,w] (P planes) */
int restrict_SUF(long P, long h, long w, const REAL *r, REAL *out, int nt)
{
    long hc = (h + 1) / 2, wc = (w + 1) / 2;
    int failed = 0;
    PARALLEL(nt)
    {
    REAL *t = (REAL *)malloc((size_t)w * sizeof(REAL));
    if (!t) failed = 1;
    FOR
    for (long p = 0; p < P; p++) {
        if (!t) continue;
        const REAL *rp = r + p * h * w;
        for (long Y = 0; Y < hc; Y++) {
            const REAL *r0 = rp + 2 * Y * w;
            for (long x = 0; x < w; x++) t[x] = r0[x];
            if (Y > 0) {
                const REAL *rm = r0 - w;
                for (long x = 0; x < w; x++) t[x] += (REAL)0.5 * rm[x];
            }
            if (2 * Y + 1 < h) {
                const REAL *rq = r0 + w;
                REAL a = right_weight_SUF(2 * Y + 1, h);
                for (long x = 0; x < w; x++) t[x] += a * rq[x];
            }
            REAL *o = out + (p * hc + Y) * wc;
            for (long X = 0; X < wc; X++) {
                REAL v = t[2 * X];
                if (X > 0) v += (REAL)0.5 * t[2 * X - 1];
                if (2 * X + 1 < w) v += right_weight_SUF(2 * X + 1, w) * t[2 * X + 1];
                o[X] = v;
            }
        }
    }
    free(t);
    }
    return failed;
}

/* u [N,C,h,w] += s [N,1,h,w] * (P uc), uc [N,C,hc,wc] */
int interp_add_SUF(long N, long C, long h, long w, const REAL *uc, const REAL *s, REAL *u,
                   int nt)
{
    long hc = (h + 1) / 2, wc = (w + 1) / 2;
    int failed = 0;
    PARALLEL(nt)
    {
    REAL *t = (REAL *)malloc((size_t)wc * sizeof(REAL));
    if (!t) failed = 1;
    FOR
    for (long q = 0; q < N * C; q++) {
        if (!t) continue;
        const REAL *cp = uc + q * hc * wc, *sp = s + (q / C) * h * w;
        REAL *up = u + q * h * w;
        for (long y = 0; y < h; y++) {
            /* t = the coarse row(s) at y: row y/2, or the mean of y/2 and y/2 + 1 */
            const REAL *c0 = cp + (y / 2) * wc;
            if (y % 2 == 1 && y / 2 + 1 < hc) {
                const REAL *c1 = c0 + wc;
                for (long X = 0; X < wc; X++) t[X] = (REAL)0.5 * (c0[X] + c1[X]);
            } else {
                for (long X = 0; X < wc; X++) t[X] = c0[X];
            }
            REAL *o = up + y * w;
            const REAL *so = sp + y * w;
            for (long X = 0; X < wc; X++) {
                o[2 * X] += so[2 * X] * t[X];
                if (2 * X + 1 < w) {
                    REAL v = X + 1 < wc ? (REAL)0.5 * (t[X] + t[X + 1]) : t[X];
                    o[2 * X + 1] += so[2 * X + 1] * v;
                }
            }
        }
    }
    free(t);
    }
    return failed;
}
"""

_FLAGS = ["-O3", "-fPIC", "-shared", "-std=c99"]
#: the extra flags, tried in turn: this CPU's instruction set and OpenMP, then without OpenMP
#: (the kernels run on one thread), then portable code
_VARIANTS = [["-march=native", "-fopenmp"], ["-march=native"], []]
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_tried = False
_error = ""


_PRELUDE = r"""
#include <stdlib.h>
#ifdef _OPENMP
#define PARALLEL(nt) _Pragma("omp parallel num_threads(nt)")
#define FOR _Pragma("omp for schedule(static)")
#else
#define PARALLEL(nt)
#define FOR
#endif
"""


def source() -> str:
    """The C source: the template instantiated for float (``_f32``) and double (``_f64``)."""
    parts = [_PRELUDE]
    for real, suf in (("float", "f32"), ("double", "f64")):
        parts.append(_TEMPLATE.replace("REAL", real).replace("SUF", suf))
    return "".join(parts)


def _cache_dir() -> Path:
    root = os.environ.get("CAMZOO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "camzoo")
    return Path(root) / "kernels"


def _cpu_id() -> str:
    """What ``-march=native`` depends on: the CPU's model and flags (Linux), else the platform."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _compile() -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler (cc, gcc or $CC) found")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    src = source()
    flags = " ".join(_FLAGS + [f for v in _VARIANTS for f in v])
    key = hashlib.sha256("\0".join([src, flags, version, _cpu_id()]).encode()).hexdigest()[:16]
    path = _cache_dir() / f"road_kernels_{key}.so"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        writable = os.access(path.parent, os.W_OK)
    except OSError:
        writable = False
    if not writable and not path.exists():  # e.g. a read-only home: this user's temp folder
        uid = os.getuid() if hasattr(os, "getuid") else "user"
        path = Path(tempfile.gettempdir()) / f"camzoo-{uid}" / "kernels" / path.name
        path.parent.mkdir(parents=True, exist_ok=True)
    lib = None
    if path.exists():
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:  # a damaged file (an interrupted copy, a full disk): build it again
            path.unlink()
    if lib is None:
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            c_file, so_file = Path(tmp) / "road_kernels.c", Path(tmp) / "road_kernels.so"
            c_file.write_text(src)
            for extra in _VARIANTS:
                res = subprocess.run([cc, *_FLAGS, *extra, str(c_file), "-o", str(so_file)],
                                     capture_output=True, text=True, timeout=300)
                if res.returncode == 0:
                    break
            else:
                raise RuntimeError(f"{cc} failed: {res.stderr.strip()[:500]}")
            os.replace(so_file, path)  # atomic: concurrent processes see a whole library
        lib = ctypes.CDLL(str(path))
    P, L, D, I = ctypes.c_void_p, ctypes.c_long, ctypes.c_double, ctypes.c_int
    for suf in _SUFFIX.values():
        getattr(lib, f"fine_op_{suf}").argtypes = [L, L, L, L, P, P, P, P, P, P, D, P, I]
        getattr(lib, f"st9_op_{suf}").argtypes = [L, L, L, L, P, P, P, P, P, D, P, I]
        getattr(lib, f"pick_{suf}").argtypes = [L, L, L, P, P, I]
        getattr(lib, f"restrict_{suf}").argtypes = [L, L, L, P, P, I]
        getattr(lib, f"interp_add_{suf}").argtypes = [L, L, L, L, P, P, P, I]
    return lib


def available() -> bool:
    """True when the kernels are compiled and loaded (compiling them on the first call);
    False where ``CAMZOO_ROAD_KERNELS=0`` or no compiler works (:func:`error` says why)."""
    global _lib, _tried, _error
    if os.environ.get("CAMZOO_ROAD_KERNELS", "1") == "0":
        return False
    with _lock:
        if not _tried:
            _tried = True
            try:
                _lib = _compile()
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                _error = f"{type(e).__name__}: {e}"
                _lib = None
    return _lib is not None


def error() -> str:
    """Why the kernels are unavailable ('' when they are, or have not been tried)."""
    return _error


def _ptr(t: Optional[Tensor], dtype: torch.dtype, what: str,
         shape: Optional[Tuple[int, ...]] = None) -> Optional[int]:
    """The data pointer of ``t`` after checking what the C code assumes (a wrong shape would
    read out of bounds)."""
    if t is None:
        return None
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{what}: need shape {tuple(shape)}; got {tuple(t.shape)}")
    if t.dtype != dtype or t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError(f"{what}: need a contiguous CPU {dtype} tensor; got {t.dtype} on "
                         f"{t.device}, contiguous={t.is_contiguous()}")
    return t.data_ptr()


def _fn(name: str, dtype: torch.dtype):
    if not available():
        raise RuntimeError(f"ROAD kernels unavailable: {error() or 'disabled'}")
    if dtype not in _SUFFIX:
        raise ValueError(f"ROAD kernels take float32 or float64; got {dtype}")
    return getattr(_lib, f"{name}_{_SUFFIX[dtype]}")


def _threads() -> int:
    """The kernels' threads: torch's intra-op count (1 where compiled without OpenMP)."""
    return max(1, torch.get_num_threads())


def _check(rc: int, name: str) -> None:
    if rc != 0:
        raise MemoryError(f"ROAD kernel {name}: out of memory")


def fine_op(u: Tensor, m: Tensor, d: Tensor, r: Optional[Tensor] = None,
            dinv: Optional[Tensor] = None, base: Optional[Tensor] = None,
            sign: float = 1.0) -> Tensor:
    """``base + dinv * (r + sign * A u)``, ``A u = m * (d * u - K * u)``.

    Args:
        u: ``[N,C,H,W]``; m: ``[N,1,H,W]`` (1 at the unknowns); d: ``[H,W]`` (the in-image
        neighbour-weight sums); r, base: ``[N,C,H,W]`` or None; dinv: ``[N,1,H,W]`` or None.
    Returns:
        a new ``[N,C,H,W]`` tensor.
    """
    N, C, H, W = u.shape
    out = torch.empty_like(u, memory_format=torch.contiguous_format)
    dt = u.dtype
    one = (N, 1, H, W)
    _check(_fn("fine_op", dt)(N, C, H, W, _ptr(m, dt, "m", one), _ptr(d, dt, "d", (H, W)),
                              _ptr(u, dt, "u"), _ptr(r, dt, "r", u.shape),
                              _ptr(dinv, dt, "dinv", one), _ptr(base, dt, "base", u.shape),
                              float(sign), out.data_ptr(), _threads()), "fine_op")
    return out


def st9_op(u: Tensor, S: Tensor, r: Optional[Tensor] = None, dinv: Optional[Tensor] = None,
           base: Optional[Tensor] = None, sign: float = 1.0) -> Tensor:
    """``base + dinv * (r + sign * S u)`` for the 9-point stencil ``S`` ``[N,9,h,w]``; the other
    arguments as :func:`fine_op`. Returns a new ``[N,C,h,w]`` tensor."""
    N, C, H, W = u.shape
    out = torch.empty_like(u, memory_format=torch.contiguous_format)
    dt = u.dtype
    _check(_fn("st9_op", dt)(N, C, H, W, _ptr(S, dt, "S", (N, 9, H, W)), _ptr(u, dt, "u"),
                             _ptr(r, dt, "r", u.shape), _ptr(dinv, dt, "dinv", (N, 1, H, W)),
                             _ptr(base, dt, "base", u.shape), float(sign), out.data_ptr(),
                             _threads()), "st9_op")
    return out


def pick(Z: Tensor) -> Tensor:
    """The Galerkin probes' gather (``road._galerkin``): ``S[:, k, Y, X] = Z[:, colour(Y + dy_k,
    X + dx_k), Y, X]`` with ``colour(a, b) = (a mod 3) * 3 + (b mod 3)``; Z, S ``[N,9,h,w]``."""
    N, nine, h, w = Z.shape
    if nine != 9:
        raise ValueError(f"pick takes the 9 colour probes [N,9,h,w]; got {tuple(Z.shape)}")
    out = torch.empty_like(Z, memory_format=torch.contiguous_format)
    _check(_fn("pick", Z.dtype)(N, h, w, _ptr(Z, Z.dtype, "Z"), out.data_ptr(), _threads()),
           "pick")
    return out


def restrict(r: Tensor) -> Tensor:
    """``P^T r``: ``[N,C,h,w]`` -> ``[N,C,(h+1)//2,(w+1)//2]``."""
    N, C, h, w = r.shape
    out = r.new_empty(N, C, (h + 1) // 2, (w + 1) // 2)
    _check(_fn("restrict", r.dtype)(N * C, h, w, _ptr(r, r.dtype, "r"), out.data_ptr(),
                                    _threads()), "restrict")
    return out


def interp_add_(u: Tensor, uc: Tensor, s: Tensor) -> Tensor:
    """``u += s * (P uc)`` in place: u ``[N,C,h,w]``, uc ``[N,C,(h+1)//2,(w+1)//2]``, s
    ``[N,1,h,w]``. Returns ``u``."""
    N, C, h, w = u.shape
    if uc.shape != (N, C, (h + 1) // 2, (w + 1) // 2):
        raise ValueError(f"coarse field {tuple(uc.shape)} does not match fine {tuple(u.shape)}")
    dt = u.dtype
    _check(_fn("interp_add", dt)(N, C, h, w, _ptr(uc, dt, "uc"), _ptr(s, dt, "s", (N, 1, h, w)),
                                 _ptr(u, dt, "u"), _threads()), "interp_add")
    return u
