"""push_to_hub.py: the dry run, the upload calls through a stand-in HfApi, tokens, and the Spaces header."""
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import yaml
from huggingface_hub import HfApi, constants
from huggingface_hub.utils import filter_repo_objects

import push_to_hub
from brainseg import upload
from brainseg.cards import is_brainseg_card, write_model_card
from brainseg.hub_meta import HUB_IDS
from brainseg.upload import split_front_matter

ROOT = Path(__file__).resolve().parent.parent
SEG, CLF, SPACE = "alice/brainseg-segmenter", "alice/brainseg-classifier", "alice/brainseg"
MODEL_FILES = {"README.md", "config.json", "curves.png", "eval_val.json", "metrics.json", "model.safetensors"}
APP_FILES = {"app.py", "requirements.txt", "README.md", "LICENSE", "brainseg/__init__.py", "brainseg/sub/mod.py",
             "examples/ATTRIBUTION.md", "examples/TCGA_CS_1_12.png", "examples/TCGA_CS_1_12_mask.png",
             "examples/odd [1]*.png"}  # fnmatch specials: unescaped, "[1]" would not match this very name


def touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def project(tmp_path, tiny_checkpoints):
    """A project tree with the things a Space must get and the things it must not (.venv, runs, tests, ...)."""
    root = tmp_path / "project"
    touch(root / "app.py", "import gradio\n")
    touch(root / "requirements.txt", "torch==2.14.1\ngradio==6.31.0\n")
    touch(root / "README.md", "# brainseg\n\nLoad `USER/brainseg-segmenter` or try the Space `USER/brainseg`.\n")
    touch(root / "LICENSE")
    touch(root / "brainseg" / "__init__.py")
    touch(root / "brainseg" / "sub" / "mod.py")
    touch(root / "examples" / "TCGA_CS_1_12.png")
    touch(root / "examples" / "TCGA_CS_1_12_mask.png")
    touch(root / "examples" / "ATTRIBUTION.md")
    touch(root / "examples" / "odd [1]*.png")
    for junk in ("brainseg/__pycache__/hub.cpython-311.pyc", "brainseg/.hidden", "tests/test_app.py", "runs/train.log",
                 ".venv/bin/python", ".git/HEAD", "examples/__pycache__/x.pyc", "notes.txt"):
        touch(root / junk)
    shutil.copy(ROOT / "docs" / "space_header.yml", touch(root / "docs" / "space_header.yml"))
    for kind in ("segmenter", "classifier"):
        d = root / "models" / kind
        shutil.copytree(tiny_checkpoints[kind], d)
        for name in ("metrics.json", "eval_val.json"):
            touch(d / name, "{}")
        for name in ("curves.png", "last_state.pt", "split.json", "notes.md"):
            touch(d / name)
    write_model_card(root / "models" / "segmenter", "segmenter")  # placeholders; the classifier keeps the mixin card
    return root


def argv(project: Path, *extra: str) -> list:
    return ["--segmenter-repo", SEG, "--classifier-repo", CLF, "--root", str(project),
            "--segmenter-dir", str(project / "models" / "segmenter"),
            "--classifier-dir", str(project / "models" / "classifier"), *extra]


@pytest.fixture
def no_network(monkeypatch):
    """Every HfApi call, HTTP request and socket connection fails the test."""
    calls = []

    def refuse(name):
        def _refuse(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"network call attempted: {name}")
        return _refuse

    for name in ("create_repo", "create_branch", "upload_folder", "upload_file", "create_commit", "whoami",
                 "repo_info", "list_repo_refs", "list_repo_files"):
        monkeypatch.setattr(HfApi, name, refuse(f"HfApi.{name}"))
    monkeypatch.setattr(httpx.Client, "send", refuse("httpx.Client.send"))
    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    return calls


class FakeApi:
    """Records what push() asks of the Hub and answers like HfApi (RepoUrl-like str, CommitInfo-like object)."""

    def __init__(self):
        self.calls = []
        self.uploaded = {}  # repo_id -> {path_in_repo: bytes} as upload_folder would send it

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))
        return f"https://huggingface.co/{'spaces/' if kw.get('repo_type') == 'space' else ''}{repo_id}"

    def create_branch(self, repo_id, **kw):
        self.calls.append(("create_branch", repo_id, kw))

    def upload_folder(self, *, repo_id, folder_path, **kw):
        self.calls.append(("upload_folder", repo_id, kw))
        folder = Path(folder_path)
        listing = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        sent = filter_repo_objects(listing, allow_patterns=kw["allow_patterns"])
        self.uploaded[repo_id] = {p: (folder / p).read_bytes() for p in sent}
        oid = f"{len(self.uploaded):040x}"
        return SimpleNamespace(oid=oid, commit_url=f"https://huggingface.co/{repo_id}/commit/{oid}")

    def of(self, name):
        return [c for c in self.calls if c[0] == name]


# ---------------------------------------------------------------- dry run

def test_dry_run_lists_every_file_and_target_without_network(project, no_network, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)  # a dry run needs no token either
    args = argv(project, "--space", SPACE, "--private", "--revision", "v1")
    assert push_to_hub.main(args + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert no_network == [] and "no network call" in out

    plans = push_to_hub.plan_uploads(push_to_hub.build_parser().parse_args(args))
    assert [(p.repo_id, p.repo_type) for p in plans] == [(SEG, "model"), (CLF, "model"), (SPACE, "space")]
    assert {f.path_in_repo for f in plans[0].files} == MODEL_FILES == {f.path_in_repo for f in plans[1].files}
    models = {f"models/{k}/{n}" for k in ("segmenter", "classifier") for n in MODEL_FILES}
    assert {f.path_in_repo for f in plans[2].files} == APP_FILES | models
    lines = out.splitlines()
    for plan in plans:
        assert any(line.startswith(f"{plan.repo_type} {plan.repo_id}: {len(plan.files)} files")
                   and line.endswith(plan.url) for line in lines)
        assert plan.url.endswith("/tree/v1") and ("/spaces/" in plan.url) == (plan.repo_type == "space")
        for f in plan.files:  # one line per file: repo type, repo id, path in repo, size
            assert any(line.startswith(f"  {plan.repo_type:<5}  {plan.repo_id}  {f.path_in_repo}  ")
                       and upload._human(f.size) in line for line in lines), f.path_in_repo
    assert "private if created" in out and "branch v1 (created if missing)" in out
    for junk in (".venv", "runs/", "tests/", "__pycache__", ".git/", "last_state.pt", "split.json", "notes",
                 ".hidden", "docs/"):
        assert not any(junk in line.split()[2] for line in lines if line.startswith("  ")), junk


def test_dry_run_from_the_command_line(project):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run([sys.executable, str(ROOT / "push_to_hub.py"), *argv(project, "--dry-run")],
                          capture_output=True, text=True, env=env, cwd=project, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"model {SEG}: 6 files" in proc.stdout and f"model {CLF}: 6 files" in proc.stdout
    assert "models/segmenter/model.safetensors" in proc.stdout  # origins relative to the working directory


# ---------------------------------------------------------------- uploads through a stand-in HfApi

def test_upload_calls_recorded(project, no_network, capsys):
    api = FakeApi()
    assert push_to_hub.main(argv(project, "--space", SPACE, "--private", "--revision", "v1"), api=api) == 0
    assert [(c[1], c[2]) for c in api.of("create_repo")] == [
        (SEG, dict(repo_type="model", private=True, exist_ok=True)),
        (CLF, dict(repo_type="model", private=True, exist_ok=True)),
        (SPACE, dict(repo_type="space", private=True, exist_ok=True, space_sdk="gradio"))]
    assert [(c[1], c[2]) for c in api.of("create_branch")] == [
        (r, dict(branch="v1", repo_type=t, exist_ok=True))
        for r, t in ((SEG, "model"), (CLF, "model"), (SPACE, "space"))]
    uploads = api.of("upload_folder")
    assert [(c[1], c[2]["repo_type"], c[2]["revision"]) for c in uploads] == [
        (SEG, "model", "v1"), (CLF, "model", "v1"), (SPACE, "space", "v1")]
    assert set(api.uploaded[SEG]) == set(api.uploaded[CLF]) == MODEL_FILES
    assert set(uploads[0][2]["allow_patterns"]) == MODEL_FILES
    models = {f"models/{k}/{n}" for k in ("segmenter", "classifier") for n in MODEL_FILES}
    assert set(api.uploaded[SPACE]) == APP_FILES | models
    seg = project / "models" / "segmenter"
    assert api.uploaded[SEG]["model.safetensors"] == (seg / "model.safetensors").read_bytes()

    # the cards name the real repos; the mixin's default card was replaced by a generated one
    for repo, readme in ((SEG, "README.md"), (CLF, "README.md"), (SPACE, "models/segmenter/README.md")):
        text = api.uploaded[repo][readme].decode()
        assert is_brainseg_card(text) and SEG in text and CLF in text
        assert HUB_IDS["segmenter"] not in text and HUB_IDS["classifier"] not in text
    assert "USER/brainseg-segmenter" in (seg / "README.md").read_text()  # the local card is left alone

    header, body = split_front_matter(api.uploaded[SPACE]["README.md"].decode())
    meta = yaml.safe_load(header)
    assert (meta["sdk"], meta["app_file"], meta["sdk_version"]) == ("gradio", "app.py", "6.31.0")
    assert meta["models"] == [SEG, CLF] and meta["license"] == "cc-by-nc-sa-4.0"
    assert f"Load `{SEG}` or try the Space `{SPACE}`" in body

    out = capsys.readouterr().out
    for c, repo in zip(uploads, (SEG, CLF, SPACE)):
        assert f"https://huggingface.co/{'spaces/' if repo == SPACE else ''}{repo}" in out
    assert f"commit {1:040x}  https://huggingface.co/{SEG}/commit/{1:040x}" in out
    assert f"commit {3:040x}" in out and "serves its main branch" in out
    assert no_network == []


def test_upload_models_only_to_the_default_branch(project, no_network):
    api = FakeApi()
    assert push_to_hub.main(argv(project), api=api) == 0
    assert api.of("create_branch") == []
    assert [(c[1], c[2]["private"]) for c in api.of("create_repo")] == [(SEG, False), (CLF, False)]
    assert all(c[2]["revision"] is None for c in api.of("upload_folder"))
    assert set(api.uploaded) == {SEG, CLF}


def test_upload_without_staging_when_nothing_is_generated(project, tmp_path):
    d = tmp_path / "plain"
    shutil.copytree(project / "models" / "segmenter", d)
    write_model_card(d, "segmenter", repo_ids={"segmenter": SEG, "classifier": CLF})
    plan = upload.plan_model_upload(d, SEG, "segmenter", repo_ids={"classifier": CLF})
    assert not plan.needs_staging and all(f.content is None for f in plan.files)
    api = FakeApi()
    upload.push([plan], api, log=lambda *_: None)
    assert set(api.uploaded[SEG]) == MODEL_FILES


def test_real_hfapi_gets_the_token_from_the_environment(project, monkeypatch, capsys):
    seen = []

    def record(name):
        def call(self, *args, **kwargs):
            seen.append((name, self.token))
            if name == "upload_folder":
                return SimpleNamespace(oid="f" * 40, commit_url="https://huggingface.co/c")
            return "https://huggingface.co/x"
        return call

    for name in ("create_repo", "create_branch", "upload_folder"):
        monkeypatch.setattr(HfApi, name, record(name))
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    assert push_to_hub.main(argv(project)) == 0
    assert seen and all(token == "hf_test_token" for _, token in seen)


def test_real_upload_folder_commits_exactly_the_planned_files(project, monkeypatch):
    """The real HfApi.upload_folder, stopped at create_commit: its pattern filter picks the planned files."""
    import huggingface_hub.hf_api as hf_api
    from huggingface_hub import CommitInfo

    monkeypatch.setattr(socket.socket, "connect", lambda *a: pytest.fail("network call attempted"))
    monkeypatch.setattr(hf_api, "is_xet_available", lambda: False)  # the single-commit path
    commits, readmes = {}, []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: f"https://huggingface.co/{repo_id}")
    monkeypatch.setattr(HfApi, "_validate_yaml", lambda self, content, **kw: readmes.append(content))

    def create_commit(self, *, repo_id, operations, revision=None, **kw):
        commits[repo_id] = {op.path_in_repo: op for op in operations}
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{'c' * 40}", commit_message="m",
                          commit_description="", oid="c" * 40)

    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    args = push_to_hub.build_parser().parse_args(argv(project, "--space", SPACE))
    plans = push_to_hub.plan_uploads(args)
    results = upload.push(plans, HfApi(token="hf_test"), log=lambda *_: None)
    for plan in plans:
        assert set(commits[plan.repo_id]) == {f.path_in_repo for f in plan.files}
    assert [r.commit for r in results] == ["c" * 40] * 3
    assert results[0].commit_url.endswith("/commit/" + "c" * 40)
    assert len(readmes) == 3 and all(split_front_matter(r)[0] for r in readmes)  # each README has its YAML


def test_checkout_times_do_not_flag_a_current_card(project, no_network, capsys):
    """Issue 9.9: a fresh clone gives the card an older mtime than its JSON; the content is what counts."""
    seg = project / "models" / "segmenter"
    os.utime(seg / "README.md", (1_000_000_000, 1_000_000_000))
    assert push_to_hub.main(argv(project, "--dry-run")) == 0
    assert "warning" not in capsys.readouterr().out


def test_a_card_that_differs_from_its_metrics_is_flagged(project, no_network, capsys):
    seg = project / "models" / "segmenter"
    (seg / "eval_val.json").write_text('{"cases": 17, "seg": {"dice_per_case_mean": 0.9}}')
    os.utime(seg / "eval_val.json", (1_000_000_000, 1_000_000_000))  # older than the card, yet newer in content
    assert push_to_hub.main(argv(project, "--dry-run")) == 0
    out = capsys.readouterr().out
    assert f"warning: {seg / 'README.md'} differs from the card its config.json, metrics.json and evaluation" in out
    assert f"python -m brainseg.hub card {seg}" in out
    write_model_card(seg, "segmenter")
    assert push_to_hub.main(argv(project, "--dry-run")) == 0
    assert "warning" not in capsys.readouterr().out


def test_a_card_with_real_repo_ids_or_script_commands_is_current(project, tmp_path):
    d = tmp_path / "plain"
    shutil.copytree(project / "models" / "segmenter", d)
    write_model_card(d, "segmenter", repo_ids={"segmenter": SEG, "classifier": CLF},
                     train_command=["# scripts/x.sh", "$PY train.py segmenter --epochs 2"])
    plan = upload.plan_model_upload(d, SEG, "segmenter", repo_ids={"classifier": CLF})
    assert upload.plan_warnings([plan]) == []


def test_placeholder_repo_ids_warn_in_the_dry_run_and_are_refused_on_push(project, no_network, capsys):
    placeholder = argv(project, "--space", "USER/brainseg")
    placeholder[placeholder.index("--segmenter-repo") + 1] = "USER/brainseg-segmenter"
    assert push_to_hub.main(placeholder + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "warning: segmenter repo USER/brainseg-segmenter uses the README's placeholder 'USER'" in out
    assert "warning: Space USER/brainseg uses the README's placeholder" in out and "alice/brainseg-segmenter" in out
    api = FakeApi()
    assert push_to_hub.main(placeholder, api=api) == 1
    err = capsys.readouterr().err
    assert "USER/brainseg-segmenter, USER/brainseg: USER is the README's placeholder" in err
    assert api.calls == [] and no_network == []  # refused before the first repo is created


# ---------------------------------------------------------------- errors

def test_missing_token_is_a_clear_error(project, no_network, monkeypatch, tmp_path, capsys):
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    assert push_to_hub.main(argv(project)) == 1
    err = capsys.readouterr().err
    assert "No Hugging Face token" in err and "HF_TOKEN" in err and "hf auth login" in err and "--dry-run" in err
    assert no_network == []


def test_missing_model_folder(project, no_network, capsys):
    args = argv(project)
    args[args.index("--segmenter-dir") + 1] = str(project / "models" / "nowhere")
    assert push_to_hub.main(args + ["--dry-run"]) == 1
    assert "not a Hub-format model folder" in capsys.readouterr().err


@pytest.mark.parametrize("repo", ["no-namespace", "a/b/c", "alice/bad name"])
def test_bad_repo_ids(project, no_network, capsys, repo):
    args = argv(project, "--dry-run")
    args[args.index("--segmenter-repo") + 1] = repo
    assert push_to_hub.main(args) == 1
    assert repo in capsys.readouterr().err


def test_space_needs_the_app(project, no_network, capsys):
    (project / "app.py").unlink()
    assert push_to_hub.main(argv(project, "--space", SPACE, "--dry-run")) == 1
    assert "app.py" in capsys.readouterr().err


# ---------------------------------------------------------------- the Spaces header

def test_space_header_file_is_a_valid_spaces_header():
    header, rest = split_front_matter((ROOT / "docs" / "space_header.yml").read_text())
    meta = yaml.safe_load(header)
    assert rest.strip() == ""
    assert {"title", "emoji", "colorFrom", "colorTo", "sdk", "sdk_version", "app_file", "pinned", "license",
            "short_description", "models"} <= set(meta)
    assert (meta["sdk"], meta["app_file"], meta["license"]) == ("gradio", "app.py", "cc-by-nc-sa-4.0")
    colors = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
    assert meta["colorFrom"] in colors and meta["colorTo"] in colors
    assert len(meta["short_description"]) <= 60
    assert meta["sdk_version"] == upload._pinned_version(ROOT / "requirements.txt", "gradio")
    assert meta["sdk_version"] == upload.SPACE_HEADER_DEFAULTS["sdk_version"]
    assert meta["models"] == [HUB_IDS["segmenter"], HUB_IDS["classifier"]]


def test_space_readme_keeps_the_readme_header(project):
    touch(project / "README.md", "---\ntitle: My demo\nemoji: 🧠\nsdk: gradio\nsdk_version: 1.0\napp_file: app.py\n"
                                 "models:\n- USER/brainseg-segmenter\n---\n\n# Body\n")
    header, body = split_front_matter(upload.space_readme(project, {"segmenter": SEG, "classifier": CLF}))
    meta = yaml.safe_load(header)
    assert meta["title"] == "My demo" and meta["sdk_version"] == "6.31.0"  # follows requirements.txt
    assert meta["models"] == [SEG, CLF] and body.strip() == "# Body"
