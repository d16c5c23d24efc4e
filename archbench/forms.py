"""Deployment forms: one model prepared the way people deploy it, checked against eager.

(About 460 lines: each form's maker and availability check live beside its registration
and the shared check, so that a form is read in one place.)

Each form is a small transformation of a deep copy of the model (the caller's
model is never touched), made once, run once on the input and checked before
anything is timed (see "Checking" below):

* ``eager``: the model as it is (in eval mode).
* ``fused``: conv-BN folding: every ``Conv2d`` directly followed by a
  ``BatchNorm2d`` inside an ``nn.Sequential`` (every ``ConvBN``) gets the folded
  weight and a bias, and the BN becomes ``nn.Identity``. A BN after a concat
  (YOLOv5's ``BottleneckCSP``) has no conv to fold into and is left alone.
* ``channels_last``: model and input in ``torch.channels_last`` memory format.
* ``torchscript``: ``torch.jit.trace`` on the input, then ``torch.jit.freeze``.
* ``onnxruntime``: exported to ONNX (through a temporary file), run by an ``onnxruntime.InferenceSession``.
* ``compile``: ``torch.compile`` (inductor, default mode); its first call, where
  compilation happens, counts as preparation: each input shape compiles anew.
* ``fp16``, ``bf16``: weights and input converted to half precision once (GPU only).
* ``openvino``, ``openvino_bf16``, ``ncnn``, ``ncnn_fp16``: other runtimes' CPU
  deployments, registered in ``archbench.runtimes`` (which says how each is made).

Every form records which runtime ran it (name and version) and at which precision
(``PreparedForm.runtime``, ``.precision``). Forms that convert the model through files
(ncnn) write them to a temporary folder that is removed, or keep them in the folder
given to ``prepare_form(artifacts_dir=...)`` / ``keep_artifacts``.

Each form is registered once in ``FORMS`` (a ``Form``: name, maker, tolerance,
availability check, whether its first call prepares it); adding a form is one
maker function and one ``register_form`` call.

``prepare_form`` returns a ``PreparedForm`` whose ``call`` is one forward on the
prepared input, to be timed inside ``torch.inference_mode()`` (and
``cpu_threads(threads)`` on CPU), or raises ``FormError`` with a one-line reason.

Checking. Tolerances are grounded in the model's own rounding error rather than
guessed: the form's outputs and eager float32's are both compared with a float64
eager reference (the same weights and input in double precision, under the same
device and precision settings). A form is accepted when its error against that
reference is at most ``max(form.tolerance, ERROR_FACTOR x eager's own error)``:
an fp32 form may reorder the float32 arithmetic (folded weights, other kernels),
which moves the result by about as much as float32 rounding already does, but not
by orders of magnitude more. Both errors are recorded. ``eager`` is the reference
itself and is not checked against itself.

Reduced-precision runtime forms (``Form.low_precision`` set) are grounded the same way in
what that precision already does to the model: torch eager run in that dtype on the same
weights and input is compared with the float64 reference too, and the form is accepted
at up to ``ERROR_FACTOR`` x that error as well (a network that amplifies rounding makes
any bf16 or fp16 run far from float64; the vacuity check then says the check proves little).

A check must be able to fail: with a second input of the same kind (``x_alt``) the
eager outputs are computed again, and if some output moves between the two inputs by
less than ``VACUITY_MARGIN`` x the accepted error, the comparison could not tell a
broken form from a good one on that output; ``PreparedForm.check`` says so
("vacuous: ..."), and the cell is flagged rather than trusted.

The first call on the prepared form (after its preparation, and before any other call
on it) is timed as the cold call (``cold_ms``); its outputs are the ones checked.
"""

from __future__ import annotations

import contextvars
import copy
import importlib.util
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from archbench.capture import captured_output
from archbench.components import ComponentRegistry
from archbench.devices import cuda_index, on_device
from archbench.errors import ArchbenchError
from archbench.folding import fold_conv_bn
from archbench.profilers.latency import cpu_threads

# Largest accepted max |form - eager| / max |eager| (per output tensor, worst output).
# fp32 forms compute the same maths in another order (folded weights, other kernels,
# fused pointwise ops): a few float32 ulps per op, accumulated over ~100 layers, stays
# well below 1e-4 of the output range (measured: 1e-7 to 1e-6 on PicoDet and
# ShuffleNetV2). fp16 keeps 11 significant bits (unit roundoff 4.9e-4) and bf16 8
# (3.9e-3); through a deep network the outputs drift by a few roundoffs: 1e-2 and 5e-2.
# fp32 forms are accepted at up to ERROR_FACTOR x eager float32's own error against the
# float64 reference, and never refused below FP32_TOLERANCE (a few float32 ulps of the
# output range): eager's error can be tiny on a shallow model.
FP32_TOLERANCE = 1e-5
ERROR_FACTOR = 10.0
VACUITY_MARGIN = 100.0

ONNX_OPSET = 17
ONNX_INSTALL_HINT = "onnxruntime is not installed (pip install 'archbench[onnx]')"


class FormError(ArchbenchError):
    """A deployment form that could not be made, or whose outputs diverge from eager."""


@dataclass(frozen=True)
class PreparedForm:
    """A model in one deployment form, checked against eager, ready to time."""

    name: str
    call: Callable[[], object]  # one forward on the prepared input
    prepare_s: float  # seconds to make the form (export, trace + freeze, compile incl. its first call)
    cold_ms: float  # the first call on the prepared form
    max_abs_err: float  # max |form - eager| over all outputs
    max_rel_err: float  # vs eager fp32: max |form - eager| / max |eager|, worst output tensor
    ref_rel_err: float  # vs the float64 reference, likewise (NaN for eager: not checked)
    eager_ref_rel_err: float  # eager fp32 vs the float64 reference (NaN for eager)
    tolerance: float  # the accepted ref_rel_err (NaN for eager)
    check: str  # "passed", "vacuous: ...", "reference" (eager), or "not checked for vacuity: ..."
    note: str
    host_timed: bool = False
    runtime: str = ""  # what ran the form, with its version: "torch 2.13.0", "openvino 2026.4.1"
    precision: str = "fp32"  # the arithmetic the runtime was asked for (and, where it says, confirmed)


@dataclass
class Made:
    """What a form's maker returns: one forward on the prepared input, and how to read it."""

    call: Callable[[], object]
    note: str
    outputs: Callable[[object], list[torch.Tensor]] | None = None  # call()'s result as tensors
    host_timed: bool = False  # runs on its own CUDA stream: time on the host after it synchronised
    runtime: str | None = None  # name and version of what runs it; None: torch
    precision: str = "fp32"


Maker = Callable[[nn.Module, torch.Tensor, int], Made]
"""Makes a form of a deep copy of the model for input ``x`` at ``threads`` threads."""


def _runs_anywhere(device: torch.device) -> str | None:
    return None


@dataclass(frozen=True)
class Form:
    """A deployment form, registered once.

    Attributes:
        name: What ``--forms`` calls it.
        make: Builds the form (a ``Maker``).
        tolerance: Largest accepted max relative error against eager.
        unavailable: Why the form cannot run on a device here (None if it can).
        first_call_prepares: Its first call does the real work (compiling): it counts
            as preparation, not as the cold call.
        low_precision: For a form that computes in a reduced precision: torch eager in
            this dtype grounds the accepted error as well (see "Checking").
    """

    name: str
    make: Maker
    tolerance: float = FP32_TOLERANCE
    unavailable: Callable[[torch.device], str | None] = _runs_anywhere
    first_call_prepares: bool = False
    low_precision: torch.dtype | None = None


FORMS = ComponentRegistry[Form]("form")


def register_form(form: Form) -> Form:
    """Add a deployment form (``ValueError`` if the name is taken)."""
    return FORMS.register(form.name, form)


def check_forms(names: Sequence[str]) -> tuple[str, ...]:
    """The names as a tuple, or ``ArchbenchError`` for one that is not a form."""
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        FORMS.get(name)
    return tuple(names)


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    return importlib.util.find_spec(module) is not None


def _cxx_compiler() -> str | None:
    return next((found for cc in ("c++", "g++", "clang++") if (found := shutil.which(cc))), None)


def torch_runtime() -> str:
    return f"torch {torch.__version__}"


# -- conversion artefacts -------------------------------------------------------
_ARTIFACTS: contextvars.ContextVar[Path | None] = contextvars.ContextVar("archbench_artifacts", default=None)


@contextmanager
def keep_artifacts(folder: Path | str | None) -> Iterator[None]:
    """Inside this block, forms that convert through files keep them in ``folder`` (created
    if missing) instead of a temporary folder; ``None`` restores the temporary folder."""
    token = _ARTIFACTS.set(Path(folder) if folder is not None else None)
    try:
        yield
    finally:
        _ARTIFACTS.reset(token)


@contextmanager
def conversion_folder(prefix: str) -> Iterator[Path]:
    """Where a maker writes its conversion files: the folder given to ``keep_artifacts`` (kept),
    else a new temporary folder, removed when the block ends (even on failure)."""
    kept = _ARTIFACTS.get()
    if kept is not None:
        kept.mkdir(parents=True, exist_ok=True)
        yield kept
        return
    with tempfile.TemporaryDirectory(prefix=f"archbench-{prefix}-") as folder:
        yield Path(folder)


def unavailable_reason(name: str, device: torch.device) -> str | None:
    """Why form ``name`` cannot run on ``device`` here, or ``None`` if it can."""
    form = FORMS.get(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available"
    return form.unavailable(device)


# -- making each form ------------------------------------------------------------
def _make_eager(model: nn.Module, x: torch.Tensor, threads: int) -> Made:
    return Made(lambda: model(x), "the model as built, eval mode")


def _make_fused(model: nn.Module, x: torch.Tensor, threads: int) -> Made:
    folded, left = fold_conv_bn(model)
    why = " (not directly after a conv in a Sequential)" if left else ""
    return Made(lambda: model(x), f"folded {folded} BatchNorms into convs; {left} left{why}")


def _make_channels_last(model: nn.Module, x: torch.Tensor, threads: int) -> Made:
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    x_cl = x.contiguous(memory_format=torch.channels_last)
    return Made(lambda: model(x_cl), "model and input in torch.channels_last")


def _make_torchscript(model: nn.Module, x: torch.Tensor, threads: int) -> Made:
    # torch.jit.optimize_for_inference (MKLDNN conversions) measured slower than plain
    # freeze on these models on CPU (PicoDet-S at 320, 1 thread: 22.9 vs 20.4 ms), so it is not used.
    with torch.no_grad():
        traced = torch.jit.trace(model, (x,), strict=False)
        frozen = torch.jit.freeze(traced)
    return Made(lambda: frozen(x), "torch.jit.trace + torch.jit.freeze (no optimize_for_inference)")


def _onnx_bytes(model: nn.Module, x: torch.Tensor) -> tuple[bytes, str]:
    """The model as ONNX bytes, and which exporter made them.

    The TorchScript-based exporter (``dynamo=False``) is tried first: it needs no
    onnxscript and takes about 1 s where the torch.export-based one takes 5-10 s on
    these models. The torch.export one (needs onnxscript) is the fallback, for a
    torch that has dropped the legacy exporter or a model it cannot trace.
    """
    with torch.no_grad(), tempfile.TemporaryDirectory(prefix="archbench-onnx-") as folder:
        path = Path(folder) / "model.onnx"
        try:
            torch.onnx.export(model, (x,), path, dynamo=False, opset_version=ONNX_OPSET)
            return path.read_bytes(), f"TorchScript exporter (dynamo=False), opset {ONNX_OPSET}"
        except Exception as legacy_error:
            if not _installed("onnxscript"):
                raise
            try:
                program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
            except Exception:
                raise legacy_error from None
            assert program is not None
            proto = program.model_proto
            opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), "?")
            return proto.SerializeToString(), f"torch.export exporter (dynamo=True), opset {opset}"


def _make_onnxruntime(model: nn.Module, x: torch.Tensor, threads: int) -> Made:
    import numpy as np
    import onnxruntime as ort

    data, exporter = _onnx_bytes(model, x)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    providers = onnxruntime_providers(x.device)
    session = ort.InferenceSession(data, options, providers=providers)
    input_name = session.get_inputs()[0].name
    provider = providers[0] if isinstance(providers[0], str) else f"{providers[0][0]} {providers[0][1]}"
    note = (f"{exporter}; onnxruntime {ort.__version__} {provider}, ORT_ENABLE_ALL, "
            f"{threads} intra-op thread(s), 1 inter-op")
    runtime = f"onnxruntime {ort.__version__}"
    if x.device.type != "cuda":
        feed = {input_name: x.detach().cpu().numpy()}
        return Made(lambda: session.run(None, feed), note, runtime=runtime)
    # On CUDA the input stays on the GPU and outputs are left there (I/O binding), as for eager.
    # onnxruntime runs on its own stream, so torch's CUDA events cannot time it: the call
    # synchronises its outputs and is timed on the host.
    index = cuda_index(x.device)
    x_gpu = x.detach().contiguous()
    binding = session.io_binding()
    binding.bind_input(name=input_name, device_type="cuda", device_id=index,
                       element_type=np.float32, shape=tuple(x_gpu.shape), buffer_ptr=x_gpu.data_ptr())
    for output in session.get_outputs():
        binding.bind_output(output.name, "cuda", index)

    def call(keep_alive: torch.Tensor = x_gpu) -> object:  # the bound buffer must outlive the session's use
        binding.synchronize_inputs()
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return binding

    def outputs(_: object) -> list[torch.Tensor]:
        return [torch.from_numpy(a) for a in binding.copy_outputs_to_cpu()]

    return Made(call, f"{note}, input and outputs bound on the GPU, host-timed after synchronize_outputs",
                outputs, host_timed=True, runtime=runtime)


def onnxruntime_providers(device: torch.device) -> list[str | tuple[str, dict[str, int]]]:
    """Execution providers for ``device``: on ``cuda:N`` the CUDA provider on device N."""
    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    return [("CUDAExecutionProvider", {"device_id": cuda_index(device)}), "CPUExecutionProvider"]


def _make_compile(model: nn.Module, x: torch.Tensor, threads: int) -> Made:
    # A fresh dynamo state per form: without it, compiling the same forward for many
    # models and shapes hits dynamo's recompile limit, after which it silently runs eager.
    torch._dynamo.reset()
    compiled = torch.compile(model, mode="default", dynamic=False)
    return Made(lambda: compiled(x), "torch.compile(mode='default', dynamic=False), inductor; "
                                      "prepare_s includes compiling at this input shape")


def _make_half(dtype: torch.dtype) -> Maker:
    """Weights and input converted once to ``dtype``, as a half-precision deployment runs
    (not autocast, which would cast every weight again on every call)."""
    def make(model: nn.Module, x: torch.Tensor, threads: int) -> Made:
        converted, x_half = model.to(dtype), x.to(dtype)
        precision = {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
        return Made(lambda: converted(x_half), f"weights and input converted to {dtype} once",
                    precision=precision)

    return make


def _onnxruntime_unavailable(device: torch.device) -> str | None:
    if not _installed("onnxruntime"):
        return ONNX_INSTALL_HINT
    if device.type == "cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return "onnxruntime has no CUDAExecutionProvider here (pip install onnxruntime-gpu)"
    return None


def _compile_unavailable(device: torch.device) -> str | None:
    if device.type != "cuda" and _cxx_compiler() is None:
        return "torch.compile on CPU needs a C++ compiler (g++ or clang++)"
    if device.type == "cuda" and not _installed("triton"):
        return "torch.compile on CUDA needs triton"
    return None


def _half_unavailable(dtype: torch.dtype) -> Callable[[torch.device], str | None]:
    def why(device: torch.device) -> str | None:
        if device.type != "cuda":
            return "needs CUDA (a GPU half-precision form)"
        with on_device(device):
            if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
                return "this GPU does not support bfloat16"
        return None

    return why


register_form(Form("eager", _make_eager))
register_form(Form("fused", _make_fused))
register_form(Form("channels_last", _make_channels_last))
register_form(Form("torchscript", _make_torchscript))
register_form(Form("onnxruntime", _make_onnxruntime, unavailable=_onnxruntime_unavailable))
register_form(Form("compile", _make_compile, unavailable=_compile_unavailable, first_call_prepares=True))
register_form(Form("fp16", _make_half(torch.float16), 1e-2, _half_unavailable(torch.float16)))
register_form(Form("bf16", _make_half(torch.bfloat16), 5e-2, _half_unavailable(torch.bfloat16)))


# -- checking ------------------------------------------------------------------
def _tensors(output: object) -> list[torch.Tensor]:
    """A forward's outputs as a flat list of float64 CPU tensors."""
    if isinstance(output, torch.Tensor):
        return [output.detach().cpu().double()]
    if isinstance(output, list | tuple):
        return [t for item in output for t in _tensors(item)]
    if hasattr(output, "__array__"):  # numpy outputs (onnxruntime, openvino, ncnn)
        return [torch.from_numpy(output.__array__()).double()]
    raise TypeError(f"output is not a tensor or a list of tensors: {type(output).__name__}")


def output_errors(expected: Sequence[torch.Tensor], actual: Sequence[torch.Tensor]) -> list[tuple[float, float]]:
    """Per output tensor: ``(max |a - e|, max |a - e| / max |e|)`` (empty outputs left out)."""
    if len(expected) != len(actual):
        raise ValueError(f"{len(actual)} outputs where eager gives {len(expected)}")
    errors = []
    for e, a in zip(expected, actual, strict=True):
        if e.shape != a.shape:
            raise ValueError(f"output shape {tuple(a.shape)} where eager gives {tuple(e.shape)}")
        if e.numel() == 0:
            continue
        diff = (a.double() - e.double()).abs().max().item()
        scale = e.double().abs().max().item()
        errors.append((diff, diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))))
    return errors


def compare_outputs(expected: Sequence[torch.Tensor], actual: Sequence[torch.Tensor]) -> tuple[float, float]:
    """``(max abs error, max relative error)``; relative is max |a - e| / max |e| per
    output tensor, the worst output's. NaN anywhere gives NaN."""
    errors = output_errors(expected, actual)
    if any(d != d or r != r for d, r in errors):
        return float("nan"), float("nan")
    return max((d for d, _ in errors), default=0.0), max((r for _, r in errors), default=0.0)


def _first_line(exc: BaseException) -> str:
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return text or type(exc).__name__


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _vacuity(expected: Sequence[torch.Tensor], moved: Sequence[torch.Tensor], bound: float) -> str:
    """"passed", or why comparing outputs could not have caught a broken form."""
    for index, (_, change) in enumerate(output_errors(expected, moved)):
        if not change > VACUITY_MARGIN * bound:
            return (f"vacuous: output {index} changes by {change:.1e} between two inputs, not above "
                    f"{VACUITY_MARGIN:g} x the accepted error {bound:.1e}")
    return "passed"


def _low_precision_error(model: nn.Module, x: torch.Tensor, dtype: torch.dtype,
                         reference: Sequence[torch.Tensor]) -> float:
    """Torch eager's own error in ``dtype`` against the float64 reference (same weights, input)."""
    converted = copy.deepcopy(model).to(dtype)
    with torch.inference_mode():
        return compare_outputs(reference, _tensors(converted(x.to(dtype))))[1]


def prepare_form(name: str, model: nn.Module, x: torch.Tensor, *, threads: int = 1,
                 x_alt: torch.Tensor | None = None, artifacts_dir: Path | str | None = None) -> PreparedForm:
    """Make deployment form ``name`` of ``model`` for input ``x``, time its first call, check it.

    Works on a deep copy in eval mode; ``model`` is never changed. See the module
    docstring for the check (a float64 reference, eager's own error, vacuity).

    Args:
        threads: intra-op threads the form will be timed with. onnxruntime's session
            is built with them and torch.compile generates its CPU kernels under them,
            so time ``call`` inside ``cpu_threads(threads)``.
        x_alt: Another input of the same kind, to confirm the check can fail.
        artifacts_dir: Keep conversion files (ncnn's param/bin, the traced model) here
            instead of a temporary folder that is removed; default: whatever an enclosing
            ``keep_artifacts`` block says (else temporary).

    Raises:
        FormError: the form is unavailable here, could not be made, or its error against
            the float64 reference exceeds what is accepted.
    """
    form = FORMS.get(name)
    reason = unavailable_reason(name, x.device)
    if reason is not None:
        raise FormError(f"{name} unavailable: {reason}")
    nan = float("nan")
    threads_context = cpu_threads(threads) if x.device.type == "cpu" else nullcontext(threads)
    artifacts = keep_artifacts(artifacts_dir) if artifacts_dir is not None else nullcontext()
    with captured_output(every_logger=True), threads_context, artifacts:
        try:
            working = copy.deepcopy(model).eval()
            _synchronize(x.device)
            started = time.perf_counter()
            made = form.make(working, x, threads)
            if form.first_call_prepares:
                with torch.inference_mode():
                    made.call()
                _synchronize(x.device)
            prepare_s = time.perf_counter() - started
            with torch.inference_mode():
                started_ns = time.perf_counter_ns()
                result = made.call()
                _synchronize(x.device)
                cold_ms = (time.perf_counter_ns() - started_ns) / 1e6
            actual = made.outputs(result) if made.outputs is not None else _tensors(result)
            model.eval()
            with torch.inference_mode():
                expected = _tensors(model(x))
            max_abs, max_rel = compare_outputs(expected, actual)
            runtime = made.runtime or torch_runtime()
            if name == "eager":
                return PreparedForm(name, made.call, prepare_s, cold_ms, max_abs, max_rel, nan, nan, nan,
                                    "reference", made.note, made.host_timed, runtime, made.precision)
            reference_model = copy.deepcopy(model).double()
            with torch.inference_mode():
                reference = _tensors(reference_model(x.double()))
            del reference_model
            eager_err = compare_outputs(reference, expected)[1]
            form_err = compare_outputs(reference, actual)[1]
            bound = max(form.tolerance, ERROR_FACTOR * eager_err)
            note, low_err = made.note, nan
            if form.low_precision is not None:
                low_err = _low_precision_error(model, x, form.low_precision, reference)
                bound = max(bound, ERROR_FACTOR * low_err) if not math.isnan(low_err) else bound
                note += f"; torch eager in {form.low_precision}: {low_err:.1e} vs the float64 reference"
            check = "not checked for vacuity: no second input"
            if x_alt is not None:
                with torch.inference_mode():
                    check = _vacuity(expected, _tensors(model(x_alt)), bound)
        except Exception as exc:
            raise FormError(f"{name} failed: {_first_line(exc)}") from exc
    if not form_err <= bound:  # NaN fails too
        raise FormError(f"{name} diverges: max relative error {form_err:.1e} against the float64 reference, "
                        f"more than max({form.tolerance:.0e}, {ERROR_FACTOR:g} x eager's {eager_err:.1e}"
                        + (f", {ERROR_FACTOR:g} x torch {form.low_precision}'s {low_err:.1e}"
                           if form.low_precision is not None else "") + ")")
    return PreparedForm(name, made.call, prepare_s, cold_ms, max_abs, max_rel, form_err, eager_err, bound,
                        check, note, made.host_timed, runtime, made.precision)


# The other runtimes' forms register themselves (their module imports this one).
import archbench.runtimes  # noqa: E402, F401
