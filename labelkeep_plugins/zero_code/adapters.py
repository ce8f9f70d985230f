"""What a framework adapter is, and the checks the host makes before it runs one.

An adapter is registered through ``labelkeep_register_adapters``. Registering
must not import the framework: the host reads the framework's installed version
from package metadata first, and instruments the adapter only once the user's
script imports the framework's ``module``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, requires, version
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from labelkeep_plugins.errors import PluginError
from labelkeep_plugins.patching import PatchSet
from labelkeep_plugins.zero_code.notices import Notices

if TYPE_CHECKING:
    from labelkeep_plugins.zero_code.session import Session


@runtime_checkable
class Adapter(Protocol):
    """The contract every adapter fulfils."""

    name: str
    """Short name users give in ``disabled_adapters`` / ``LABELKEEP_DISABLED_ADAPTERS``."""
    framework: str
    """The distribution it patches, as pip knows it (e.g. ``torch-pruning``)."""
    supported: str
    """A PEP 440 specifier of the framework versions it was verified against."""
    module: str
    """The module whose first import triggers :meth:`instrument`."""

    def instrument(self, session: Session) -> None:
        """Patch the framework so the session sees its models and training."""

    def uninstrument(self) -> None:
        """Undo every patch (by identity, in reverse order, only where still ours)."""


def declared_range(distribution: str, framework: str) -> str:
    """The version range ``distribution``'s own metadata requires of ``framework``.

    So an adapter's supported range is its pin, written once, in its pyproject (as
    OpenTelemetry's instrumentors read theirs).
    """
    try:
        listed = requires(distribution) or []
    except PackageNotFoundError:
        raise PluginError(
            f"the adapter's distribution {distribution!r} is not installed, so its supported "
            f"{framework} versions are unknown; install it (pip install {distribution})"
        ) from None
    for line in listed:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if requirement.marker is None and canonicalize_name(requirement.name) == canonicalize_name(
            framework
        ):
            bounds = sorted(requirement.specifier, key=lambda b: (b.operator[0] == "<", str(b)))
            return ",".join(str(bound) for bound in bounds)  # lower bound first: >=1.5,<1.7
    raise PluginError(
        f"{distribution}'s metadata requires no {framework} version; add one to its "
        f"pyproject's dependencies (e.g. {framework}>=X,<Y) and reinstall it"
    )


class PatchingAdapter:
    """A base for adapters whose work is a set of attribute patches.

    ``distribution`` is the adapter's own package: its requirement on ``framework`` is
    the supported range, unless a subclass sets ``supported`` itself.
    """

    name = ""
    framework = ""
    distribution = ""
    module = ""

    @property
    def supported(self) -> str:
        return declared_range(self.distribution, self.framework)

    def __init__(self) -> None:
        self.patches = PatchSet(self.name or type(self).__name__)
        self.notices = Notices(self.name or type(self).__name__)  # said once each, to the session
        self.session: Session | None = None

    def instrument(self, session: Session) -> None:
        self.session = self.notices.session = session
        self.install(session)

    def install(self, session: Session) -> None:
        """Apply the patches; subclasses override."""
        raise NotImplementedError

    def uninstrument(self) -> None:
        self.patches.undo()
        self.session = self.notices.session = None


@dataclass(frozen=True)
class Compatibility:
    """Whether an adapter's framework is installed in a supported version."""

    installed: str | None
    ok: bool
    reason: str


def check_compatibility(adapter: Adapter) -> Compatibility:
    """Read the framework's installed version from metadata (never importing it)."""
    try:
        installed = version(adapter.framework)
    except PackageNotFoundError:
        return Compatibility(None, False, f"{adapter.framework} is not installed")
    try:
        supported = SpecifierSet(adapter.supported)
        ok = Version(installed) in supported
    except PluginError as exc:
        return Compatibility(installed, False, str(exc))
    except (InvalidSpecifier, InvalidVersion) as exc:
        return Compatibility(installed, False, f"cannot compare versions ({exc})")
    if not ok:
        return Compatibility(
            installed,
            False,
            f"{adapter.framework} {installed} is outside the supported range {adapter.supported}",
        )
    return Compatibility(installed, True, "supported")
