"""Compile every Triton kernel of the library for real GPU targets, without a GPU.

The CPU interpreter accepts code the GPU compiler rejects (it executes Python), so the CI also
lowers each kernel to PTX and a cubin for sm_80 and sm_90 with the example signatures the
wrappers use. Run ``python -m kernels._compile_check`` (it must run in a process where
``TRITON_INTERPRET`` is unset, because that switch is read when triton is imported).
"""
from __future__ import annotations

import sys

import torch

from kernels._util import interpret_mode

_DTYPES = {
    torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
    torch.int32: "i32", torch.int64: "i64", torch.int8: "i8", torch.uint8: "u8", torch.bool: "i1",
}


def _sig(value):
    if isinstance(value, torch.Tensor):
        return "*" + _DTYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    if isinstance(value, tuple):
        return tuple(_sig(v) for v in value)
    raise TypeError(f"no Triton signature for {type(value)}")


def compile_kernel(kernel, args: dict, constexprs: dict, capability: int = 90, num_warps: int = 4):
    """Lower ``kernel`` (a ``triton.jit`` function) with runtime ``args`` and ``constexprs``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {name: _sig(v) for name, v in args.items()}
    signature.update({name: "constexpr" for name in constexprs})
    src = ASTSource(fn=kernel, signature=signature, constexprs=dict(constexprs))
    return triton.compile(src, target=GPUTarget("cuda", capability, 32), options={"num_warps": num_warps})


def kernel_cases():
    """(name, kernel, args, constexprs, num_warps) for every kernel at realistic settings."""
    from kernels.distill import triton as dt
    from kernels.masked_update import triton as mt
    from kernels.msidf import triton as ms

    cases = []
    for ms_case in ms.compile_cases():
        cases.append(ms_case)
    for d_case in dt.compile_cases():
        cases.append(d_case)
    for m_case in mt.compile_cases():
        cases.append(m_case)
    return cases


def main(argv=None) -> int:
    if interpret_mode():
        print("TRITON_INTERPRET is set; run the compile check in a process without it", file=sys.stderr)
        return 2
    failures = 0
    for name, kernel, args, constexprs, warps in kernel_cases():
        for cap in (80, 90):
            try:
                compiled = compile_kernel(kernel, args, constexprs, cap, warps)
                smem = getattr(compiled.metadata, "shared", "?")
                print(f"ok   {name} sm_{cap} ({len(compiled.asm['cubin'])} byte cubin, {smem} B shared)")
            except Exception as exc:  # report every failure, not only the first
                failures += 1
                print(f"FAIL {name} sm_{cap}: {type(exc).__name__}: {exc}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
