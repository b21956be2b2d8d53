"""The bytes model: how many bytes one optimizer step must move per parameter element, at the least.

This is the one place the benchmark's effective GB/s comes from. A step that reads and writes each operand
exactly once, with float32 params, grads and state, moves (4 bytes each):

| rule (bench key)                | reads            | writes        | B/element |
| ------------------------------- | ---------------- | ------------- | --------- |
| sgd, momentum 0                 | p, g             | p             | 12        |
| sgd, momentum != 0              | p, g, buf        | p, buf        | 20        |
| adam, adamw                     | p, g, m, v       | p, m, v       | 28        |
| amsgrad (adam amsgrad=True)     | p, g, m, v, vmax | p, m, v, vmax | 36        |
| padam (official: amsgrad=True)  | p, g, m, v, vmax | p, m, v, vmax | 36        |
| padam amsgrad=False             | as adam          |               | 28        |
| adamclip, adabound              | as adam          |               | 28        |
| adabound amsbound=True          | as amsgrad       |               | 36        |
| swats, Adam phase               | as adam; <p,g>, <p,p> are reduced in the same pass | | 28 |
| swats, SGD phase                | p, g, buf        | p, buf        | 20        |
| mas, momentum 0                 | p, g, m, v       | p, m, v       | 28        |
| mas, momentum != 0              | p, g, m, v, buf  | p, m, v, buf  | 36        |
| ndadam, weight vectors (dim>=2) | p, g, m          | p, m          | 20        |
| ndadam, 1-D params (Adam)       | as adam          |               | 28        |
| rmsprop, adagrad                | p, g, sq         | p, sq         | 20        |
| rmsprop, centered or momentum   | + g_avg / buf    | + g_avg / buf | 28        |
| rmsprop, centered and momentum  | p, g, sq, ga, buf| p, sq, ga, buf| 36        |

ND-Adam's second moment is one scalar per weight vector (negligible); its per-vector reductions (<g,w>,
<g,g>, ||w||) need the row twice, which costs no extra DRAM traffic only when a row stays on chip (one
program per row): the model counts that ideal. MAS variants other than "sum" need per-tensor reductions of
both directions before the update; a two-pass implementation reads p, g, m, v, buf again: ``step_bytes`` still
counts the one-pass minimum, so their GB/s reads as "effective", and ``mas_pass_bytes`` counts what our two
passes really move (the GPU predictions and the PTX check use it).

Reductions, step counters and scalars are not counted. For other parameter dtypes, p and g take their own
size and the state stays float32 (fused_hybrid keeps float32 state for fp16/bf16 params) unless ``state_bytes``
says otherwise (``state_dtype=torch.bfloat16``, issue 16 part 3, and torch.optim, whose state takes the param's
dtype).

Low-precision params (issue 16, README "Low-precision parameters"), per element and step, from what the kernels
read and write (triton_kernels/rounding.py ``store_param``, the CPU loops' staged chunks, which stay in cache):

| option                    | extra traffic                                   | extra memory             |
| ------------------------- | ----------------------------------------------- | ------------------------ |
| ``stochastic_rounding``   | none: the random bits are computed (Philox of the tensor's seed, the step, the index) | a 0-dim seed per tensor |
| ``kahan_summation``       | the compensation buffer read and written where p is written: 2 x param bytes | 1 x param bytes |
| ``state_dtype`` bfloat16  | each state tensor's read and write at 2 B instead of 4 | half the state |

So Adam with bfloat16 params and gradients: float32 state 22 B (p 2+2, g 2, m and v 4+4 each), bfloat16 state
14 B, Kahan + 4 B on either (26, 18); the same +4 for every rule (float16 alike). Kahan applies to 16-bit params
only (float32 / float64 params of the same group ignore it: no buffer, no traffic), and so does
``kahan=True`` here. MAS's two-pass variants touch the buffer in their second pass only, where p is written.
"""
from __future__ import annotations

import math

F32 = 4

# Per rule: (param-sized operands read besides p and g, operands written besides p), all float32 state.
# Written as state counts so the dtype rule above is applied in one function.
_STATE = {
    "sgd": 0,            # + buf when momentum != 0
    "sgd_momentum": 1,
    "adam": 2,
    "adamw": 2,
    "amsgrad": 3,
    "padam": 3,          # amsgrad=True, the official default
    "padam_noams": 2,
    "adamclip": 2,
    "adabound": 2,
    "amsbound": 3,
    "swats": 2,          # Adam phase
    "swats_sgd": 1,      # SGD phase
    "mas": 2,            # momentum 0 (MAS's default)
    "mas_momentum": 3,
    "ndadam_vec": 1,     # m only; v is per vector
    "rmsprop": 1,        # square_avg; + grad_avg when centered, + buf with momentum
    "adagrad": 1,        # sum
}


def state_operands(rule: str, opts: dict | None = None) -> int:
    """Number of param-sized float32 state tensors a step reads and writes for ``rule`` with ``opts``."""
    opts = opts or {}
    if rule == "sgd":
        return _STATE["sgd_momentum"] if opts.get("momentum", 0) else _STATE["sgd"]
    if rule == "adam" and opts.get("amsgrad"):
        return _STATE["amsgrad"]
    if rule == "padam" and not opts.get("amsgrad", True):
        return _STATE["padam_noams"]
    if rule == "adabound" and opts.get("amsbound"):
        return _STATE["amsbound"]
    if rule == "swats" and opts.get("phase") == "sgd":
        return _STATE["swats_sgd"]
    if rule == "mas" and opts.get("momentum", 0):
        return _STATE["mas_momentum"]
    if rule == "rmsprop":
        return _STATE["rmsprop"] + bool(opts.get("centered")) + bool(opts.get("momentum", 0))
    if rule in ("adam", "adamw", "amsgrad", "padam", "adamclip", "adabound", "swats", "mas", "adagrad"):
        return _STATE[rule]
    raise KeyError(f"no bytes model for rule {rule!r}")


def kahan_bytes(param_bytes: int, kahan: bool) -> int:
    """Bytes the Kahan compensation buffer adds per element and step: read and written (param dtype), for 16-bit
    params only."""
    return 2 * param_bytes if kahan and param_bytes == 2 else 0


def bytes_per_element(rule: str, opts: dict | None = None, param_bytes: int = F32, state_bytes: int = F32,
                      kahan: bool = False) -> int:
    """Bytes one step moves per element: p read+write, g read (param dtype), each state tensor read+write
    (``state_bytes`` each), and the Kahan buffer read+write when ``kahan`` (16-bit params). Stochastic rounding
    moves nothing more."""
    if rule == "ndadam":
        raise ValueError("ndadam depends on the shapes: use step_bytes()")
    return 3 * param_bytes + 2 * state_bytes * state_operands(rule, opts) + kahan_bytes(param_bytes, kahan)


def step_bytes(rule: str, shapes, opts: dict | None = None, param_bytes: int = F32, state_bytes: int = F32,
               kahan: bool = False) -> int:
    """Bytes one step over tensors of ``shapes`` must move."""
    if rule != "ndadam":
        return bytes_per_element(rule, opts, param_bytes, state_bytes, kahan) * sum(math.prod(s) for s in shapes)
    total = 0
    for s in shapes:
        n = math.prod(s)
        per = 3 * param_bytes + 2 * state_bytes * (_STATE["ndadam_vec"] if len(s) >= 2 else _STATE["adam"])
        total += (per + kahan_bytes(param_bytes, kahan)) * n
    return total


def lowp_bytes_per_element(rule: str, opts: dict | None = None, param_bytes: int = 2, state_bytes: int = F32,
                           stochastic_rounding: bool = False, kahan_summation: bool = False) -> int:
    """``bytes_per_element`` named by the optimizer's keywords: ``stochastic_rounding`` costs no traffic (the
    argument is taken so a table of configurations can pass its keywords through)."""
    del stochastic_rounding  # the bits are computed, not loaded
    return bytes_per_element(rule, opts, param_bytes, state_bytes, kahan_summation)


def mas_pass_bytes(pass_: int, param_bytes: int = F32, state_bytes: int = F32, momentum: bool = False,
                   nesterov: bool = False, weight_decay: bool = False, kahan: bool = False) -> tuple[int, int]:
    """(read, written) bytes per element of one pass of MAS's two-pass variants, as the Triton kernels do it.
    Pass 0 updates m, v (and buf) and reduces the directions: p is read only for weight decay. Pass 1 re-reads the
    updated state to form both directions and writes p; the SGD direction is buf itself there unless Nesterov (or
    no momentum), so g is not read then. (The CUDA kernels' normalized variant reads no m, v in pass 1: less.)"""
    b = state_bytes if momentum else 0
    if pass_ == 0:
        return (param_bytes if weight_decay else 0) + param_bytes + 2 * state_bytes + b, 2 * state_bytes + b
    g = param_bytes if (not momentum or nesterov) else 0
    c = kahan_bytes(param_bytes, kahan) // 2  # the Kahan buffer: read and written where p is written
    return param_bytes + g + 2 * state_bytes + b + c, param_bytes + c


def mas_two_pass_step_bytes(shapes, momentum: bool = False, param_bytes: int = F32, state_bytes: int = F32,
                            kahan: bool = False) -> int:
    """Bytes one step of MAS's reducing variants moves over tensors of ``shapes`` (both passes, no weight decay)."""
    per = sum(sum(mas_pass_bytes(k, param_bytes, state_bytes, momentum, kahan=kahan)) for k in (0, 1))
    return per * sum(math.prod(s) for s in shapes)


# The copy/axpy reference kernels of the same run.
AXPY_BYTES_PER_ELEMENT = 3 * F32   # a += s*b: read a, read b, write a
COPY_BYTES_PER_ELEMENT = 2 * F32   # dst.copy_(src)
