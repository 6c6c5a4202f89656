"""Compile the Triton gate kernel of two revisions for an H100/H200 (sm_90) on this machine, no GPU needed, and
compare the PTX: identical code means identical speed.

Why: the kernel's arguments were regrouped into tuples (pointers, sizes, scales, strides) so that its signature
fits on a screen; Triton flattens tuples and specialises each element as it would a separate argument (a stride
of 1 becomes a constant, which is what lets channels_last loads vectorise). This checks that claim on the
compiled code for the specialisations the launcher produces: channels_last (channel stride 1) and NCHW (width
stride 1), with and without the biases, for float32 and bfloat16.

    python scripts/gate_kernel_ptx.py --old-rev 7c15c88 --out docs/results/bench-cpu-ablation-layers/gate-ptx.json

Without ``--old-rev`` it compiles today's kernels (the forward one with each optional term, and the backward one)
for sm_90 and counts their vector loads: the check that the training kernels, verified on CPU by Triton's
interpreter, also compile for the GPU.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import tempfile
from pathlib import Path

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

KERNEL = "src/scnet/fast/gate_triton.py"
TARGET = GPUTarget("cuda", 90, 32)


def _kernel(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._gate_product_kernel


def _code(ptx: str) -> list[str]:
    """The PTX instructions: without comments and the debug sections (which name the source file)."""
    body = ptx.split(".section\t.debug")[0]
    return [line for line in body.splitlines() if line.strip() and not line.strip().startswith(("//", ".file", ".loc"))]


def _flat_ptx(kernel, dtype: str, block_c: int, bias: bool) -> list[str]:
    """The 34-scalar-argument kernel, specialised as the launcher specialises its arguments for a map whose
    channels (and so every stride but the unit one) divide by 16: pointers and integers marked divisible by 16."""
    names = list(kernel.arg_names)
    unit = ("sf_c", "sx_c", "sk_c", "so_c") if block_c != 4 else ("sf_w", "sx_w", "sk_w", "so_w")
    constants = dict(HAS_BIAS=bias, ACC=tl.float32, BLOCK_P=2048 // block_c, BLOCK_C=block_c, **{n: 1 for n in unit})
    sig = {n: "constexpr" if n in constants else f"*{dtype}" if n.endswith("_ptr") else "fp32" if n.startswith("scale") else "i32"
           for n in names}
    aligned = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if sig[n] in (f"*{dtype}", "i32")}
    src = ASTSource(fn=kernel, signature=sig, constexprs={(names.index(k),): v for k, v in constants.items()}, attrs=aligned)
    return _code(triton.compile(src, target=TARGET).asm["ptx"])


def _tuple_ptx(kernel, dtype: str, block_c: int, bias: bool) -> list[str]:
    """The tuple-argument kernel with the biases on or off (no features scale: the inference form's calls)."""
    return _compile(kernel, 7, 4, dtype, block_c, (False, bias, bias))


def _compile(kernel, n_ptrs: int, n_strided: int, dtype: str, block_c: int, terms: tuple) -> list[str]:
    """Today's kernels: the tuple arguments (ptrs, sizes, scales, strides of ``n_strided`` tensors), then the constant
    TERMS tuple and the other constants, specialised as the launcher's arguments are for channels divisible by 16."""
    unit = 1 if block_c != 4 else 3
    strides = tuple(tuple("constexpr" if j == unit else "i32" for j in range(4)) for _ in range(n_strided))
    sig = dict(ptrs=(f"*{dtype}",) * n_ptrs, sizes=("i32",) * 6, scales=("fp32", "fp32"), strides=strides,
               TERMS=("constexpr",) * 3, ACC="constexpr", BLOCK_P="constexpr", BLOCK_C="constexpr")
    constants = {**{(4, i): t for i, t in enumerate(terms)}, (5,): tl.float32, (6,): 2048 // block_c, (7,): block_c,
                 **{(3, t, unit): 1 for t in range(n_strided)}}
    aligned = {**{(0, i): [["tt.divisibility", 16]] for i in range(n_ptrs)}, **{(1, i): [["tt.divisibility", 16]] for i in range(6)},
               **{(3, t, j): [["tt.divisibility", 16]] for t in range(n_strided) for j in range(4) if j != unit}}
    return _code(triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=constants, attrs=aligned), target=TARGET).asm["ptx"])


def compile_current(path: Path) -> list[dict]:
    """Compile today's forward kernel (each optional term) and the backward kernel for sm_90; count vector loads."""
    spec = importlib.util.spec_from_file_location("gate_now", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    names = ("features_scale", "features_bias", "calib_bias")
    cases = [("forward", module._gate_product_kernel, 7, 4, t) for t in ((False, False, False), (False, True, True), (True, True, False))]
    cases += [("backward", module._gate_product_backward_kernel, 8, 6, t) for t in ((False, False, False), (True, True, False))]
    rows = []
    for dtype in ("fp32", "bf16"):
        for block_c, layout in ((64, "channels_last, 64 channels"), (4, "NCHW")):
            for name, kernel, n_ptrs, n_strided, terms in cases:
                code = _compile(kernel, n_ptrs, n_strided, dtype, block_c, terms)
                vector = sum("ld.global.v" in line for line in code)
                used = [n for n, on in zip(names, terms) if on] or ["none"]
                rows.append(dict(kernel=name, dtype=dtype, layout=layout, terms=used, lines=len(code), vector_loads=vector))
                print(f"{name:8s} {dtype} {layout:28s} {'+'.join(used):40s}: {len(code)} PTX lines, {vector} vector loads")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old-rev", help="the git revision whose kernel takes 34 scalar arguments (else: compile today's kernels)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if not args.old_rev:
        rows = compile_current(Path(KERNEL))
        if args.out:
            args.out.write_text(json.dumps(dict(triton=triton.__version__, target="sm_90", rows=rows), indent=1))
        return
    with tempfile.TemporaryDirectory() as tmp:
        old_path = Path(tmp) / "gate_triton_old.py"
        old_path.write_text(subprocess.run(["git", "show", f"{args.old_rev}:{KERNEL}"], capture_output=True, text=True, check=True).stdout)
        old, new = _kernel(old_path, "gate_old"), _kernel(Path(KERNEL), "gate_new")
        rows = []
        for dtype in ("fp32", "bf16"):
            for block_c, layout in ((64, "channels_last, 64 channels"), (16, "channels_last, 16 channels"), (4, "NCHW")):
                for bias in (True, False):
                    a, b = _flat_ptx(old, dtype, block_c, bias), _tuple_ptx(new, dtype, block_c, bias)
                    vector = sum("ld.global.v" in line for line in b)
                    rows.append(dict(dtype=dtype, layout=layout, bias=bias, old_lines=len(a), new_lines=len(b), vector_loads=vector, identical=a == b))
                    print(f"{dtype} {layout:28s} bias={bias!s:5s}: {len(a)} vs {len(b)} PTX lines ({vector} vector loads), identical: {a == b}")
    if args.out:
        args.out.write_text(json.dumps(dict(old_rev=args.old_rev, triton=triton.__version__, target="sm_90", rows=rows), indent=1))


if __name__ == "__main__":
    main()
