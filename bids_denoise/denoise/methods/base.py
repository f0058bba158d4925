"""What a denoising method is, as data: its options and what the app needs to know about it."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from bids_denoise.denoise.shells import MIN_GROUP_VOLUMES

#: Option kinds: how a value is read from the command line and checked from a TOML file.
KINDS = ("float", "int", "choice", "switch", "radius")


@dataclass(frozen=True)
class Option:
    """One setting of a method.

    Attributes
    ----------
    name : str
        Attribute of ``config.workflow`` and key of the method's settings.
    flag : str or None
        Command-line flag (``None``: a setting of the configuration file only).
    help : str
        Documentation, without the default (added by :meth:`help_text`).
    default : object
        The value when not set.
    kind : {"float", "int", "choice", "switch", "radius"}
        ``switch`` is a flag that stores the opposite of its default; ``radius`` takes one
        value for all axes or three.
    choices : tuple
        Allowed values of a ``choice`` (or of an ``int`` restricted to a few values).
    minimum, maximum : float, optional
        Inclusive bounds; ``positive`` makes the minimum exclusive.
    sidecar : str, optional
        Key of the value in the sidecar's ``DenoisingParameters``.
    interface : str, optional
        Input of the method's interface that receives the value (``None``: not passed).
    default_help : str, optional
        How ``--help`` states the default, when ``str(default)`` would not say it well.
    aliases : tuple of str
        Other spellings of the flag.
    """

    name: str
    flag: str | None
    help: str
    default: object = None
    kind: str = "float"
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    positive: bool = False
    metavar: str | None = None
    sidecar: str | None = None
    interface: str | None = None
    default_help: str | None = None
    aliases: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"option {self.name}: unknown kind {self.kind!r}")

    def help_text(self) -> str:
        """``help`` followed by ``Default: ...``."""
        if self.default_help is not None:
            default = self.default_help
        elif self.kind == "switch":
            default = "on" if self.default else "off"
        elif self.kind == "radius":
            default = " ".join(str(r) for r in dict.fromkeys(self.default))
        else:
            default = f"{self.default:g}" if isinstance(self.default, float) else str(self.default)
        return f"{self.help} Default: {default}."

    def coerce(self, value):
        """``value`` (from the command line or a TOML file) checked and converted.

        Raises
        ------
        ValueError
            Naming ``workflow.<name>`` and what is allowed.
        """
        where = f"workflow.{self.name}"
        if value is None:
            if self.default is None:
                return None
            raise ValueError(f"{where} must be set")
        if self.kind == "switch":
            return bool(value)
        if self.kind == "radius":
            values = list(value) if isinstance(value, (list, tuple)) else [value]
            if len(values) not in (1, 3) or any(isinstance(v, bool) or int(v) != float(v) for v in values):
                raise ValueError(f"{where} must be one integer or three, got {value!r}")
            radius = tuple(int(v) for v in values * (3 if len(values) == 1 else 1))
            if any(r < self.minimum or r > self.maximum for r in radius):
                raise ValueError(f"{where} must be between {self.minimum:g} and {self.maximum:g}, got {radius}")
            return radius
        if self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"{where} must be one of {', '.join(map(str, self.choices))}; got {value!r}")
            return value
        number = _number(value, integer=self.kind == "int", where=where)
        if self.choices and number not in self.choices:
            raise ValueError(f"{where} must be one of {', '.join(map(str, self.choices))}; got {value!r}")
        low_ok = self.minimum is None or (number > self.minimum if self.positive else number >= self.minimum)
        if not low_ok or (self.maximum is not None and number > self.maximum):
            raise ValueError(f"{where} must be {self._range()}; got {value!r}")
        return number

    def _range(self) -> str:
        if self.maximum is not None:
            return f"between {self.minimum:g} and {self.maximum:g}"
        return f"{'>' if self.positive else '>='} {self.minimum:g}"


def _number(value, *, integer: bool, where: str):
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{where} must be a number; got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{where} must be a number; got {value!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"{where} must be finite; got {value!r}")
    if integer:
        if number != int(number):
            raise ValueError(f"{where} must be an integer; got {value!r}")
        return int(number)
    return number


@dataclass(frozen=True)
class Method:
    """One denoising method and everything the app needs to know about it.

    Attributes
    ----------
    name, label : str
        ``--method`` value and the name in texts and sidecars.
    summary : str
        One clause for ``--method --help``.
    description : str
        Description of the method's group of options in ``--help``.
    options : tuple of Option
        The method's settings (defaults, ranges, flags, sidecar keys, interface inputs).
    interface : str
        ``"module:Class"`` of the Nipype interface that denoises one volume group; only the
        workflows import it.
    memory_gb : callable
        ``memory_gb(shape, settings, largest_group, device) -> float``: peak memory of one
        group's node, for the scheduler and the ``--mem-gb`` check.
    sentence : callable
        ``sentence(settings) -> str``: the methods sentence, citing ``[@key]`` references.
    bibtex : str
        BibTeX entries of the references the sentence cites.
    parameters : callable, optional
        ``parameters(settings) -> dict`` of extra sidecar entries beyond the options'.
    min_group_volumes : int
        Groups with fewer volumes are copied through (recorded as a decision).
    default_grouping : {"all", "shell"}
        ``--shell-grouping`` when the user gives none: ``"all"`` (the app's default) or
        ``"shell"`` for a method built around one model per shell (DDM2).
    check_runtime : callable, optional
        ``check_runtime(runs, settings, device, n_threads, n_runs)``: estimate the run time of
        the selected runs (their ``RunCheck``s; ``n_runs`` counts them all, checked or not), log
        it, and raise ``UsageError`` when the run should not start (e.g. days on a CPU).
    borrows : tuple of str
        Methods whose options this one also takes (``auto`` runs Patch2Self and MP-PCA with
        their settings).
    inputs : callable, optional
        ``inputs(settings) -> dict`` of interface inputs, for a method whose inputs are not its
        own options (``auto`` passes its candidates' inputs); default: from the options.
    error_estimate : bool
        Whether each group's error is estimated by running the interface again on perturbed
        data (Monte-Carlo SURE, :mod:`bids_denoise.denoise.error`); it doubles the denoising
        time. An interface may override ``GroupDenoiser._denoise_again`` to make that rerun
        cheaper (e.g. reuse a trained model).
    """

    name: str
    label: str
    summary: str
    description: str
    options: tuple[Option, ...]
    interface: str
    memory_gb: Callable
    sentence: Callable
    bibtex: str
    parameters: Callable | None = None
    check_runtime: Callable | None = None
    min_group_volumes: int = MIN_GROUP_VOLUMES
    default_grouping: str = "all"
    error_estimate: bool = True
    borrows: tuple[str, ...] = ()
    inputs: Callable | None = None

    def interface_class(self):
        """Import and return the interface class (Nipype is loaded here, not before)."""
        module, _, name = self.interface.partition(":")
        return getattr(importlib.import_module(module), name)

    def interface_inputs(self, settings) -> dict:
        """The interface inputs that ``settings`` (e.g. ``config.workflow``) set.

        Options whose value is ``None`` are left out, so the interface keeps its default.
        """
        if self.inputs is not None:
            return self.inputs(settings)
        inputs = {}
        for option in self.options:
            value = getattr(settings, option.name, option.default)
            if option.interface and value is not None:
                inputs[option.interface] = list(value) if isinstance(value, tuple) else value
        return inputs

    def sidecar_parameters(self, settings) -> dict:
        """The options with a sidecar key, then the method's extra parameters."""
        parameters = {}
        for option in self.options:
            if option.sidecar:
                value = getattr(settings, option.name, option.default)
                parameters[option.sidecar] = list(value) if isinstance(value, tuple) else value
        if self.parameters is not None:
            parameters.update(self.parameters(settings))
        return parameters


def join_words(items) -> str:
    """``"a"``, ``"a and b"``, ``"a, b and c"``."""
    items = [str(item) for item in items]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]
