"""Gradients and exact Hessian-vector products through ``torch.compile`` (``hvp="compiled"``).

The two functions of one loss that a solve needs, each compiled once per process and shared by
every operator (``torch.compile`` keys its graphs on the model's structure, not on the object, so
a new model of the same architecture re-uses them; so does a new ``loss_fn`` of the same class, or
the same ``lambda`` made again, while a loss of another class or another function's code compiles
again, up to dynamo's limit of 8 per function, past which torch runs it eagerly):

* :func:`gradient_and_loss`: ``(g(theta), L(theta))`` by :func:`torch.func.grad_and_value`. It
  gives the gradients of the finite-difference start level (``forward_difference``).
* :func:`gradient_and_product`: ``(g(theta), H v)`` by reverse over reverse,
  ``vjp(grad(L))(v)``: one forward, one backward and one backward of the backward per product,
  with no graph kept in between. Reverse over reverse rather than forward over reverse
  (``jvp(grad(L))``), because the compiled forward-mode product kills the process with a
  segmentation fault on ``F.mse_loss`` against a one-hot target in torch 2.13
  (``bench/probe_compiled_forward_ad.py``), while the reverse-mode one matches the eager product
  on every loss probed (cross-entropy, MSE with one-hot and float targets, Huber).

Why: on the small GPT of ``bench/bench_peers.py`` (1 thread) a compiled gradient takes 5-6 ms
against 8-11 ms for the eager difference product, and a compiled product 14-18 ms against
18-20 ms plus the ~10 ms gradient graph of double backprop (``bench/RESULTS.md``, issue 16,
section 1i). The price is the first call's compile: 15-50 s for the two on a 2-core CPU.

Where ``torch.compile`` fails (no C++ compiler for inductor, an operation it cannot trace), the
function runs eagerly for the rest of the process, with one warning; the numbers are the same
functions either way. An error that the eager function raises too is the caller's and propagates;
so does, without a retry, an exception the user's own code raises inside the compiled call (its
innermost frame outside torch, triton and inductor's generated code, not one of dynamo's): a forward that raises once on a bad batch is
not taken for a compile failure. Before an eager retry, ``restore`` puts back what the failed call's
forward moved (a state carried in a plain attribute). On a torch whose dynamo cannot trace the
transforms (:func:`transforms_compile`: torch 2.2) nothing is compiled: both functions run eagerly,
after one warning naming the setting and the torch version.
"""
from __future__ import annotations

import importlib.util
import math
import os
import re
import warnings

from typing import Callable

import torch

from catapult.curvature.hessian import math_attention
from catapult.curvature.stateless import Holder, holding, parametrizations_uncached, slots_kept
from catapult.curvature.twice import forms_for, needs_forms

__all__ = ["gradient_and_loss", "gradient_and_product", "compile_failures", "transforms_compile",
           "TRANSFORMS_COMPILE_FROM"]


def _unflatten(flat: torch.Tensor, layout) -> dict:
    """The parameters as views of ``flat``, each cast to its own dtype (``layout``: names,
    shapes, dtypes)."""
    names, shapes, dtypes = layout
    sizes = [math.prod(shape) for shape in shapes]
    return {n: c.view(shape).to(d) for n, c, shape, d in zip(names, torch.split(flat, sizes), shapes,
                                                             dtypes)}


def _loss(holder: Holder, loss_fn, flat: torch.Tensor, layout, frozen: dict, buffers: dict, inputs,
          targets, forms: bool | None = None) -> torch.Tensor:
    # buffers are cloned inside the transformed function: train-mode BatchNorm writes them, and
    # torch.func refuses writes to tensors captured from outside; the math kernel of
    # scaled_dot_product_attention, because the fused ones have no double backward; weight norm
    # by parts, because its fused kernel's double backward is wrong (twice.py)
    # (and the loss inside the swap too: a loss_fn may read the model's parameters, stateless.functional_loss)
    # (forms: the operator's own answer, which its graph walk also gives for an F.embedding call with
    # scale_grad_by_freq: from needs_forms alone, such a sharpness came out 4% low)
    model = holder.model
    with math_attention(), forms_for(needs_forms(model) if forms is None else forms):
        fresh = {n: b.clone() for n, b in buffers.items()}
        loss = holding(holder, {**frozen, **fresh, **_unflatten(flat, layout)},
                       lambda: loss_fn(model(inputs), targets))
    return loss.reshape(())


def _gradient_and_loss(model, loss_fn, flat, layout, frozen, buffers, inputs, targets, forms=None):
    return torch.func.grad_and_value(_loss, argnums=2)(model, loss_fn, flat, layout, frozen,
                                                        buffers, inputs, targets, forms)


def _gradient_and_product(model, loss_fn, flat, vector, layout, frozen, buffers, inputs, targets, forms=None):
    grad = torch.func.grad(_loss, argnums=2)
    gradient, pull = torch.func.vjp(
        lambda f: grad(model, loss_fn, f, layout, frozen, buffers, inputs, targets, forms), flat)
    return gradient, pull(vector)[0]


_EAGER = {"gradient": _gradient_and_loss, "product": _gradient_and_product}
_COMPILED: dict = {}
#: ``{function name: the error that made it run eagerly}`` in this process.
compile_failures: dict[str, str] = {}


def _restore_saved_tensor_hooks(enabled: bool) -> None:
    """Enable saved-tensor hooks again where they were enabled before a compiled call: torch.func
    turns them off inside its transforms, and a compiled transform that raised (a forward through
    ``torch.utils.checkpoint(use_reentrant=False)``, torch 2.13) left them off for the whole
    process, so every later ``checkpoint`` call, the user's training's included, raised "torch.func
    ... don't yet support saved tensor hooks"."""
    if enabled and not _hooks_enabled():
        torch._C._autograd._saved_tensors_hooks_enable()


def _hooks_enabled() -> bool:
    """Whether saved-tensor hooks are enabled (True on a torch without the query)."""
    query = getattr(torch._C._autograd, "_saved_tensors_hooks_is_enabled", None)
    return True if query is None else bool(query())


_ATTENTION_KERNELS = ("flash", "mem_efficient", "math", "cudnn")


def _attention_kernels() -> dict:
    """Which ``scaled_dot_product_attention`` kernels are enabled (process-wide flags)."""
    flags = {}
    for kernel in _ATTENTION_KERNELS:
        query = getattr(torch.backends.cuda, f"{kernel}_sdp_enabled", None)
        if query is not None:
            flags[kernel] = bool(query())
    return flags


def _restore_attention_kernels(flags: dict) -> None:
    """Put the attention kernels' flags back: a compiled transform that raised inside ``_loss``'s
    ``math_attention()`` left the math kernel alone enabled for the whole process (flash and
    memory-efficient off), so the user's own training ran on the slower kernel, with other numerics."""
    for kernel, on in flags.items():
        getattr(torch.backends.cuda, f"enable_{kernel}_sdp")(on)


def _run(name: str, *args, restore: Callable[[], None] | None = None):
    enabled, kernels = _hooks_enabled(), _attention_kernels()
    try:
        # (a caller's parametrize.cached() would hand every call the first one's weights: stateless.py)
        # (slots_kept: functional_call's restore misses a submodule at two paths)
        # (the model inside a Holder: the tensors stay in it through the loss, stateless.holding)
        with slots_kept(args[0]), parametrizations_uncached():
            return _run_kept(name, Holder(args[0]), *args[1:], enabled=enabled, restore=restore)
    finally:
        _restore_saved_tensor_hooks(enabled)
        _restore_attention_kernels(kernels)


def _raised_by_user_code(err: BaseException) -> bool:
    """Whether ``err`` was raised in code outside torch (the user's forward or loss): not one of
    dynamo's or inductor's exceptions, and its innermost frame is not torch's: neither in torch's or
    triton's package nor in the code inductor generated (its cache folder: a size assert of the
    compiled wrapper). An error a torch op raises (a shape mismatch in a layer) counts as torch's:
    the eager retry raises it again."""
    if isinstance(err, torch._dynamo.exc.TorchDynamoException):
        return False
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return not os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_torch_code_folders())


def _inductor_default_cache_dir() -> str:
    """Inductor's default cache folder: its own answer where torch has ``cache_dir_utils``,
    else the same rule (``torchinductor_<user>`` in the temp directory; torch 2.2's ImportError
    replaced the compiled error being judged)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:
        import getpass
        import re
        import tempfile

        try:
            user = getpass.getuser()
        except (KeyError, ImportError, OSError):
            user = f"uid_{os.getuid()}" if hasattr(os, "getuid") else "unknown_user"
        return os.path.join(tempfile.gettempdir(), "torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user))
    return default_cache_dir()


def _torch_code_folders() -> tuple[str, ...]:
    """Torch's package, triton's (where installed) and inductor's cache folder of generated code
    (read as inductor reads it, without its side effects: it sets the variable and makes the folder)."""
    folders = [os.path.dirname(os.path.abspath(torch.__file__)),
               os.path.abspath(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or _inductor_default_cache_dir())]
    triton = importlib.util.find_spec("triton")
    if triton is not None and triton.origin:
        folders.append(os.path.dirname(os.path.abspath(triton.origin)))
    return tuple(folder + os.sep for folder in folders)


#: The oldest torch whose dynamo traces ``torch.func.grad_and_value`` and ``vjp`` (2.2.2's raises
#: "Cannot access data pointer of Tensor that doesn't have storage" on both, after an ImportError of
#: ``math_attention``'s ``torch.nn.attention``, a 2.3 module; 2.3.1 compiles them, bench/RESULTS.md).
TRANSFORMS_COMPILE_FROM = (2, 3)


def transforms_compile(version: str | None = None) -> bool:
    """Whether ``torch.compile`` of this torch (or of torch ``version``) traces the ``torch.func``
    transforms the compiled gradients and products are made of (:data:`TRANSFORMS_COMPILE_FROM`).

    Example:
        >>> transforms_compile("2.2.2+cu121"), transforms_compile("2.3.1"), transforms_compile("2.13.0+cpu")
        (False, True, True)
    """
    major, minor = (int(part) for part in re.match(r"(\d+)\.(\d+)", version or torch.__version__).groups())
    return (major, minor) >= TRANSFORMS_COMPILE_FROM


def _eager_on_this_torch() -> None:
    """Both functions eager for the process on a torch whose dynamo cannot trace their transforms,
    with one warning (no compile tried: each try cost a failed trace and a warning of its own,
    the first naming only torch.nn.attention)."""
    reason = f"torch {torch.__version__}'s torch.compile cannot trace torch.func's grad_and_value and vjp"
    fresh = [n for n in _EAGER if n not in _COMPILED and n not in compile_failures]
    for n in fresh:
        compile_failures[n] = reason
    if fresh:
        since = ".".join(map(str, TRANSFORMS_COMPILE_FROM))
        warnings.warn(f"hvp='compiled': {reason} (torch {since} and later do); the gradients and products run "
                      f"eagerly in this process, the same functions", RuntimeWarning, stacklevel=5)


def _run_kept(name: str, *args, enabled: bool, restore: Callable[[], None] | None = None):
    if name not in _COMPILED and name not in compile_failures and not transforms_compile():
        _eager_on_this_torch()
    if name in compile_failures:
        return _EAGER[name](*args)
    if name not in _COMPILED:  # compiled on first use: importing catapult never touches dynamo
        _COMPILED[name] = torch.compile(_EAGER[name])
    try:
        return _COMPILED[name](*args)
    except Exception as err:
        if _raised_by_user_code(err):   # the user's own exception (a bad batch): theirs, not a compile
            raise                       # failure (an eager retry could pass, and the mode be given up)
        _restore_saved_tensor_hooks(enabled)
        if restore is not None:   # the failed call may have run part of the forward (up to a graph break)
            restore()             # and moved a state it carries: the retry starts from the user's
        result = _EAGER[name](*args)  # the caller's own error raises here, and is theirs
        compile_failures[name] = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200]}"
        warnings.warn(f"hvp='compiled': torch.compile failed on the {name} "
                      f"({compile_failures[name]}); it runs eagerly in this process",
                      RuntimeWarning, stacklevel=3)
        return result


def gradient_and_loss(model, loss_fn, flat: torch.Tensor, layout, frozen: dict, buffers: dict,
                      inputs, targets, forms: bool | None = None, restore: Callable[[], None] | None = None):
    """``(flat gradient, loss)`` of ``loss_fn(model(inputs), targets)`` at the flat parameter
    vector ``flat``, compiled. ``layout``: ``(names, shapes, dtypes)`` of the parameters in
    ``flat`` (each is cast to its dtype); ``frozen``: the other parameters; ``buffers``: the
    model's buffers, which the model sees as fresh clones (they are left as they are). Flat
    vectors in and out: one tensor for dynamo to guard and no per-parameter copies around the
    call (0.45 ms of a 5 ms gradient on the small GPT). ``forms``: whether the forward needs
    :func:`~catapult.curvature.twice.second_order_forms` (None: :func:`~catapult.curvature.twice.needs_forms`).
    ``restore``: puts back what the model's forward moves (a state it carries in a plain attribute,
    :class:`~catapult.curvature.stateless.AttributesKept`), called before the eager retry of a
    compiled call that failed, which may have run part of the forward.

    Example (``L(w) = mean((x w)^2)``, gradient ``2 x^T x w / n``):
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> layout = (("weight",), ((1, 1),), (torch.float32,))
        >>> x = torch.tensor([[1.0], [2.0]])
        >>> gradient_and_loss(model, torch.nn.MSELoss(), torch.tensor([3.0]), layout, {}, {}, x,
        ...                   torch.zeros(2, 1))
        (tensor([15.]), tensor(22.5000))
    """
    return _run("gradient", model, loss_fn, flat, layout, frozen, buffers, inputs, targets, forms, restore=restore)


def gradient_and_product(model, loss_fn, flat: torch.Tensor, vector: torch.Tensor, layout,
                         frozen: dict, buffers: dict, inputs, targets, forms: bool | None = None,
                         restore: Callable[[], None] | None = None):
    """``(flat gradient, H v)`` of ``loss_fn(model(inputs), targets)`` at the flat parameter
    vector ``flat`` along the flat ``vector``, by reverse over reverse, compiled (the other
    arguments as in :func:`gradient_and_loss`).

    Example (the same loss: ``H = 2 x^T x / n = 5``):
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> layout = (("weight",), ((1, 1),), (torch.float32,))
        >>> x = torch.tensor([[1.0], [2.0]])
        >>> gradient_and_product(model, torch.nn.MSELoss(), torch.tensor([3.0]), torch.tensor([1.0]),
        ...                      layout, {}, {}, x, torch.zeros(2, 1))[1]
        tensor([5.])
    """
    return _run("product", model, loss_fn, flat, vector, layout, frozen, buffers, inputs, targets, forms,
                restore=restore)
