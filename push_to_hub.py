"""Publish the shipped models (and, with --space, the demo as a Gradio Space) to the Hugging Face Hub.

    python push_to_hub.py --segmenter-repo NAME/brainseg-segmenter --classifier-repo NAME/brainseg-classifier \\
        [--space NAME/brainseg] [--private] [--revision BRANCH] [--dry-run]

NAME is your Hugging Face user or organisation; the placeholder ids the cards and the README show until
then are brainseg.hub_meta.HUB_IDS, which this command refuses to push to.

The token comes from HF_TOKEN or the cached login (`hf auth login`). Repos are created when missing,
a --revision branch too; each repo gets one commit with only its Hub-format files (config.json,
model.safetensors, README.md, metrics.json, *.png, eval*.json), and the Space gets app.py,
requirements.txt, brainseg/, examples/, the models under models/ (so it runs offline) and the README
with its Spaces header. --dry-run lists every file and its target and makes no network call.
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from brainseg.sources import DEFAULT_MODELS, PROJECT_ROOT
from brainseg.upload import UploadPlan, format_plans, hub_token, plan_model_upload, plan_space_upload, plan_warnings, \
    push

__all__ = ["build_parser", "plan_uploads", "push", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--segmenter-repo", required=True, metavar="USER/NAME", help="model repo for the segmenter")
    p.add_argument("--classifier-repo", required=True, metavar="USER/NAME", help="model repo for the classifier")
    p.add_argument("--space", metavar="USER/NAME", help="also publish the demo as a Gradio Space")
    p.add_argument("--private", action="store_true", help="create missing repos as private (existing ones keep "
                                                          "their visibility)")
    p.add_argument("--revision", metavar="BRANCH", help="push to this branch, created when missing (a Space "
                                                        "serves its main branch only)")
    p.add_argument("--dry-run", action="store_true", help="list every file and its target; no network call")
    p.add_argument("--segmenter-dir", type=Path, default=DEFAULT_MODELS["segmenter"])
    p.add_argument("--classifier-dir", type=Path, default=DEFAULT_MODELS["classifier"])
    p.add_argument("--root", type=Path, default=PROJECT_ROOT, help="project folder the Space is built from")
    return p


def plan_uploads(args: argparse.Namespace) -> List[UploadPlan]:
    """One :class:`UploadPlan` per repo, from the parsed arguments; reads files, touches no network."""
    repo_ids = {"segmenter": args.segmenter_repo, "classifier": args.classifier_repo}
    if args.space:
        repo_ids["space"] = args.space
    dirs = {"segmenter": args.segmenter_dir, "classifier": args.classifier_dir}
    plans = [plan_model_upload(dirs[kind], repo_ids[kind], kind, private=args.private, revision=args.revision,
                               repo_ids=repo_ids) for kind in ("segmenter", "classifier")]
    if args.space:
        plans.append(plan_space_upload(args.root, args.space, dirs, private=args.private, revision=args.revision,
                                       repo_ids=repo_ids))
    return plans


def main(argv: Optional[Sequence[str]] = None, api=None) -> int:
    """The CLI; ``api`` replaces ``HfApi(token=...)`` (tests pass a stand-in). Returns the exit status."""
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    args = build_parser().parse_args(argv)
    try:
        plans = plan_uploads(args)
        if args.dry_run:
            print("Dry run: no network call was made and nothing was uploaded. Files and their targets:\n")
            print(format_plans(plans))
            return 0
        for warning in plan_warnings(plans):
            print(f"warning: {warning}", file=sys.stderr)
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi(token=hub_token())
        results = push(plans, api)
    except (FileNotFoundError, ValueError, LocalTokenNotFoundError, HfHubHTTPError) as e:
        print(f"push_to_hub.py: error: {e}", file=sys.stderr)
        return 1
    print()
    for r in results:
        print(f"{r.repo_type} {r.repo_id}{'@' + r.revision if r.revision else ''}: {r.repo_url}\n"
              f"  commit {r.commit}  {r.commit_url}")
    if args.space and args.revision:
        print(f"note: the Space serves its main branch; {args.revision} holds the upload until merged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
