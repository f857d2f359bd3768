"""Checks of deploy/docker/Dockerfile and .dockerignore.

Stages are read with dockerfile-parse; each target's chain of stages is followed to its base
image, so a setting inherited from a shared stage (USER in `runtime`) counts for every target.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from dockerfile_parse import DockerfileParser

from common import ROOT, TARGETS, DockerIgnore, EnvVars, PROGRAM_SECTIONS, Report, checked_env_name, rel

DOCKERFILE = ROOT / "deploy/docker/Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
# What a runtime image must not carry: compilers, build systems, headers, the Rust toolchain.
BUILD_TOOL = re.compile(r"^(gcc.*|g\+\+.*|cpp.*|clang.*|llvm.*|make|cmake|build-essential|pkg-config|pkgconf|"
                        r"cargo|rustc|rustup|.*-dev|libc6-dev|binutils.*|autoconf|automake|libtool)$")
# Packages of debian:<release>-slim itself (Priority: required and the base of apt), so a binary
# may link their libraries without the stage installing them.
BASE_IMAGE_PACKAGES = {"libc6", "libgcc-s1", "libstdc++6", "zlib1g", "libzstd1", "liblzma5", "libbz2-1.0",
                       "libcrypt1", "libselinux1", "libpcre2-8-0", "libacl1", "libattr1", "libtinfo6"}


@dataclass
class Stage:
    name: str
    base: str
    line: int
    instructions: list[tuple[str, str, int]] = field(default_factory=list)


def parse(path: Path = DOCKERFILE) -> tuple[list[Stage], dict[str, str]]:
    parser = DockerfileParser(path=str(path))
    stages: list[Stage] = []
    global_args: dict[str, str] = {}
    for item in parser.structure:
        ins, value, line = item["instruction"], item["value"], item["startline"] + 1
        if ins == "COMMENT":
            continue
        if ins == "FROM":
            words = [w for w in value.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else f"#{len(stages)}"
            stages.append(Stage(name=name, base=words[0], line=line))
        elif not stages:
            if ins == "ARG" and "=" in value:
                k, v = value.split("=", 1)
                global_args[k.strip()] = v.strip().strip('"')
        else:
            stages[-1].instructions.append((ins, value, line))
    return stages, global_args


def resolve(base: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), base)


def chain(stage: Stage, by_name: dict[str, Stage], args: dict[str, str]) -> tuple[list[Stage], str]:
    """The stage and its ancestors (nearest first), and the external image at the root."""
    out = [stage]
    base = resolve(stage.base, args)
    while base in by_name:
        out.append(by_name[base])
        base = resolve(by_name[base].base, args)
    return out, base


def pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name = image.rsplit("/", 1)[-1]
    return ":" in name and not name.endswith(":latest")


def apt_packages(run: str) -> list[str]:
    pkgs: list[str] = []
    for part in re.split(r"&&|;|\|\|", run):
        words = shlex.split(part.replace("\\\n", " "))
        if "apt-get" in words and "install" in words:
            pkgs += [w for w in words[words.index("install") + 1:] if not w.startswith("-")]
    return pkgs


def check(report: Report, env_vars: EnvVars, binaries: Path | None) -> None:
    stages, args = parse()
    by_name = {s.name: s for s in stages}
    where = rel(DOCKERFILE)
    builder_copied: set[str] = set()
    for s in stages:
        for ins, value, _ in s.instructions:
            if ins == "RUN" and "cargo build" in value:
                report.check("--locked" in value, f"{where}: `cargo build` in stage {s.name} must use --locked (Cargo.lock decides versions)")
                m = re.search(r"for bin in ([^;]+);", value)
                builder_copied |= set(m.group(1).split()) if m else set()
            if ins == "RUN" and "cargo install" in value:
                report.check("--locked" in value and "--version" in value,
                             f"{where}:{s.name}: `cargo install` must pin --version and use --locked")

    # Builder and runtime on the same Debian release (the binaries link its OpenSSL and glibc).
    releases = {}
    for key in ("RUST_IMAGE", "RUNTIME_IMAGE"):
        m = re.search(r"(bookworm|trixie|bullseye)", args.get(key, ""))
        releases[key] = m.group(1) if m else None
    report.check(releases["RUST_IMAGE"] is not None and releases["RUST_IMAGE"] == releases["RUNTIME_IMAGE"],
                 f"{where}: builder {args.get('RUST_IMAGE')!r} and runtime {args.get('RUNTIME_IMAGE')!r} must name the same Debian release")

    for target, program in TARGETS.items():
        stage = by_name.get(target)
        if not report.check(stage is not None, f"{where}: no stage named {target!r} (docker build --target {target})"):
            continue
        report.count("dockerfile targets")
        stages_up, root = chain(stage, by_name, args)
        names = " <- ".join(s.name for s in stages_up)
        report.check(pinned(root), f"{where}: target {target} ({names}) starts from {root!r}: pin a tag (not latest) or digest")
        report.check("rust" not in root.split("/")[-1].split(":")[0],
                     f"{where}: target {target} is built on the Rust toolchain image {root!r}; runtime stages start from a slim base")
        user = entrypoint = None
        env: dict[str, str] = {}
        expose: list[str] = []
        copied_bins: list[str] = []
        for st in reversed(stages_up):  # root first, so later stages override
            for ins, value, line in st.instructions:
                if ins == "USER":
                    user = value.strip()
                elif ins == "ENTRYPOINT":
                    entrypoint = value.strip()
                elif ins == "ENV":
                    for k, v in re.findall(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S+)', value):
                        env[k] = v.strip('"')
                elif ins == "EXPOSE":
                    expose += value.split()
                elif ins == "RUN":
                    bad = [p for p in apt_packages(value) if BUILD_TOOL.match(p)]
                    report.check(not bad, f"{where}:{line}: runtime stage {st.name} (target {target}) installs build tools {bad}")
                    report.check(not re.search(r"\b(cargo|rustc|rustup|gcc|cc|make)\b\s", value) or "apt-get" in value,
                                 f"{where}:{line}: runtime stage {st.name} runs a build tool")
                elif ins == "COPY":
                    m = re.match(r"--from=(\S+)\s+(\S+)\s+(\S+)", value)
                    if m:
                        report.check(m.group(1) in by_name, f"{where}:{line}: COPY --from={m.group(1)}: no such stage")
                        if m.group(2).startswith("/out/"):
                            copied_bins.append(m.group(2).rsplit("/", 1)[-1])
                        report.check(not re.search(r"cargo|rustup|target/", m.group(2)),
                                     f"{where}:{line}: target {target} copies {m.group(2)} from {m.group(1)} (toolchain or build tree)")
        uid = (user or "").split(":", 1)[0]
        report.check(uid.isdigit() and int(uid) != 0,
                     f"{where}: target {target}: USER must be a numeric non-root uid (is {user!r}); Kubernetes runAsNonRoot checks numbers")
        ok = False
        if entrypoint:
            try:
                ep = json.loads(entrypoint)
                ok = isinstance(ep, list) and ep and ep[0] == f"/usr/local/bin/{program}"
            except json.JSONDecodeError:
                ok = False
        report.check(ok, f"{where}: target {target}: ENTRYPOINT must be the exec form [\"/usr/local/bin/{program}\"], is {entrypoint!r}")
        report.check(program in copied_bins, f"{where}: target {target} does not COPY /out/{program} from the builder")
        report.check(program in builder_copied, f"{where}: the builder does not put {program} in /out")
        for k in env:
            if checked_env_name(k):
                report.check(env_vars.accepts(PROGRAM_SECTIONS[program], k),
                             f"{where}: target {target} sets ENV {k}, which {program} does not read (deploy/config/env-vars.txt)")
        bind = env.get("SAGA_HTTP__BIND") or env.get("SAGA_REGISTRY_BIND")
        if program != "sagactl":
            port = bind.rsplit(":", 1)[-1] if bind else None
            report.check(bool(port) and port in expose, f"{where}: target {target} listens on {bind!r} but EXPOSEs {expose}")
            report.check(bool(bind) and bind.startswith("0.0.0.0:"),
                         f"{where}: target {target} must listen on all interfaces in a container (is {bind!r})")

    check_context(report, stages)
    check_runtime_libraries(report, stages, by_name, args, binaries)


def check_context(report: Report, stages: list[Stage]) -> None:
    """Everything the build reads is in the build context after .dockerignore."""
    if not report.check(DOCKERIGNORE.exists(), ".dockerignore is missing at the repository root"):
        return
    ignore = DockerIgnore(DOCKERIGNORE)
    needed: dict[str, str] = {"Cargo.toml": "workspace manifest", "Cargo.lock": "--locked builds"}
    members = re.search(r"members\s*=\s*\[(.*?)\]", (ROOT / "Cargo.toml").read_text(), re.S)
    for member in re.findall(r'"([^"]+)"', members.group(1) if members else ""):
        needed[f"{member}/Cargo.toml"] = "workspace member"
        for src in ("src/lib.rs", "src/main.rs"):
            if (ROOT / member / src).exists():
                needed[f"{member}/{src}"] = "workspace member"
    # Files the compiler reads outside the crate sources: include_str!/include_bytes!/migrate!.
    macro = re.compile(r'(include_str|include_bytes|sqlx::migrate)!\(\s*"([^"]+)"')
    for rs in sorted(p for p in ROOT.rglob("*.rs") if "target" not in p.parts and ".git" not in p.parts):
        for kind, arg in macro.findall(rs.read_text()):
            base = rs.parent if kind != "sqlx::migrate" else _crate_dir(rs)
            target = (base / arg).resolve()
            if target.is_dir():
                files = [f for f in target.rglob("*") if f.is_file()]
            else:
                files = [target]
            for f in files:
                needed[rel(f)] = f"{kind}! in {rel(rs)}"
    for s in stages:
        for ins, value, line in s.instructions:
            if ins == "COPY" and "--from=" not in value:
                src = value.split()[0]
                if src != ".":
                    for f in (ROOT / src).rglob("*") if (ROOT / src).is_dir() else [ROOT / src]:
                        if f.is_file():
                            needed[rel(f)] = f"COPY at Dockerfile line {line}"
    for path, why in sorted(needed.items()):
        report.check(not ignore.excluded(path), f".dockerignore excludes {path}, which the image build needs ({why})")
    for path in ("target/release/x", ".git/HEAD", "deploy/k8s/base/kustomization.yaml", "services/order/target/x"):
        report.check(ignore.excluded(path), f".dockerignore lets {path} into the build context")
    report.count("build-context files checked", len(needed))


def _crate_dir(path: Path) -> Path:
    for parent in path.parents:
        if (parent / "Cargo.toml").exists():
            return parent
    return path.parent


def check_runtime_libraries(report: Report, stages, by_name, args, binaries: Path | None) -> None:
    """With built binaries at hand: each shared library they need comes from a package the
    runtime stage installs or the base image has (package names from this host, a Debian of the
    same release)."""
    if binaries is None:
        report.note("runtime libraries: not checked (pass a cargo target profile directory, e.g. target/debug, as the second argument)")
        return
    installed = set(BASE_IMAGE_PACKAGES)
    runtime = by_name.get("runtime")
    for ins, value, _ in runtime.instructions if runtime else []:
        if ins == "RUN":
            installed |= set(apt_packages(value))
    checked = 0
    for program in TARGETS.values():
        binary = binaries / program
        if not binary.exists():
            report.fail(f"runtime libraries: {binary} does not exist (build it first, or leave out the directory)")
            continue
        dynamic = subprocess.run(["readelf", "-d", str(binary)], capture_output=True, text=True, check=True).stdout
        for lib in re.findall(r"\(NEEDED\).*\[(.+?)\]", dynamic):
            owner = subprocess.run(["dpkg", "-S", f"*/{lib}"], capture_output=True, text=True)
            pkgs = {name.split(":", 1)[0] for line in owner.stdout.splitlines() if ": " in line
                    for name in line.split(": ", 1)[0].split(", ")}
            report.check(bool(pkgs & installed),
                         f"{program} needs {lib} (package {', '.join(sorted(pkgs)) or 'unknown'}), which the runtime stage does not install")
            checked += 1
    report.count("shared libraries checked", checked)
