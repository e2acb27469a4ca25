"""Which CUDA build of a vLLM release a host installs, chosen from the catalog by the host's
driver (pure: no host, no pyinfra), and whether a Python version meets a release's range."""

from __future__ import annotations

from dataclasses import dataclass

from servekit import catalog
from servekit.hostplan import SourcesPlan


@dataclass(frozen=True)
class Build:
    """A CUDA build of a vLLM release and how uv installs it."""

    cuda: str
    min_driver: str
    source: str
    unconfirmed: bool
    index_url: str
    extra_index_urls: tuple[str, ...]
    index_strategy: str | None

    def describe(self) -> str:
        note = " (unconfirmed build)" if self.unconfirmed else ""
        return f"CUDA {self.cuda} build, needs driver >= {self.min_driver}{note}"


def builds(version: str, sources: SourcesPlan) -> list[Build]:
    """The catalog's builds of `version`, in order of preference, with their indexes."""
    release = catalog.vllm_release(version)
    result = []
    for build in release.builds:
        cu = "cu" + build.cuda.replace(".", "")
        if build.source == "pypi":
            extra: tuple[str, ...] = ()
            strategy = None
        else:
            wheels = sources.vllm_wheels.rstrip("/")
            torch = sources.torch_index.rstrip("/")
            extra = (f"{wheels}/{version}/{cu}", f"{torch}/{cu}")
            strategy = "unsafe-best-match"
        result.append(
            Build(
                cuda=build.cuda,
                min_driver=build.min_driver,
                source=build.source,
                unconfirmed=build.unconfirmed,
                index_url=sources.python_index,
                extra_index_urls=extra,
                index_strategy=strategy,
            )
        )
    return result


class DriverTooOld(ValueError):
    """No build of the pinned vLLM runs on this driver; the message names the alternatives."""


def choose_build(version: str, sources: SourcesPlan, driver: str) -> Build:
    """The first build whose minimum driver the host's driver meets."""
    candidates = builds(version, sources)
    for build in candidates:
        if catalog.version_tuple(driver) >= catalog.version_tuple(build.min_driver):
            return build
    options = "; ".join(b.describe() for b in candidates)
    newer = [
        str(branch)
        for branch, info in catalog.driver_branches().items()
        if catalog.version_tuple(info.max_cuda) >= catalog.version_tuple(candidates[0].cuda)
    ]
    raise DriverTooOld(
        f"NVIDIA driver {driver} is too old for vLLM {version} ({options}). Fix: upgrade the "
        f"driver with deploys/gpu.py (Versions(driver_branch=...) one of {', '.join(newer)}), or "
        "pin a vLLM release whose builds support this driver (Versions(vllm=...), see "
        "servekit/catalog/versions.toml)"
    )


def python_satisfies(version: str, spec: str) -> bool:
    """Whether Python `version` ('3.11.2') satisfies a catalog range ('>=3.11,<3.15')."""
    have = catalog.version_tuple(version)[:2]
    for part in spec.split(","):
        part = part.strip()
        for op in (">=", "<=", "==", "<", ">"):
            if part.startswith(op):
                want = catalog.version_tuple(part[len(op) :])[:2]
                ok = {
                    ">=": have >= want,
                    "<=": have <= want,
                    "==": have == want,
                    "<": have < want,
                    ">": have > want,
                }[op]
                if not ok:
                    return False
                break
    return True
