"""Content Credentials: time to sign one output and the bytes the manifest adds, per format.

The runner's own path (gpu_runner/provenance.py OutputSigner.sign): build the manifest
definition, sign with the input as a parentOf ingredient (EC P-256, a development CA made on
the spot, no timestamp authority), and read the result back with the trust anchor. Separately:
signing alone, and the read-back alone. Inputs: a real photo (skimage's astronaut) encoded at
each size, and a 2 s H.264 clip.

With ``--pipeline N``: also N sequential 512 px uploads into ``inbox/filter/`` through a private
stack with content credentials on, then through another with them off; the runner's time
outside the recipe (GET input, sign, PUT outputs, manifests) side by side.

Usage: python -m bench.credentials [--repeat 20] [--sizes 512 1024] [--pipeline 0]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

from PIL import Image
from skimage import data

from bench.stack import timed
from bucketbrush.credentials import ensure_dev_credentials, read_credentials, xmp_packet
from bucketbrush.settings import Settings
from gpu_runner.images import encode_image
from gpu_runner.provenance import OutputSigner, made_by
from gpu_runner.recipes import get_recipe
from gpu_runner.recipes.base import RecipeResult
from gpu_runner.video_samples import sample_clip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--pipeline", type=int, default=0, metavar="N", help="also N jobs through stacks on and off")
    args = ap.parse_args()
    per_output(args)
    if args.pipeline:
        pipeline(args.pipeline)


def per_output(args: argparse.Namespace) -> None:
    import c2pa

    with tempfile.TemporaryDirectory() as tmp:
        ensure_dev_credentials(Path(tmp))
        signer = OutputSigner.from_settings(Settings(state_dir=Path(tmp), _env_file=None))
        assert signer is not None
        recipe = get_recipe("img2img")
        params = recipe.params.model_validate({"prompt": "an oil painting"})
        result = RecipeResult(artifacts=[], model={"id": "sd15", "weights": "sha256:" + "0" * 64})
        made = made_by("img2img", params, result)
        photo = Image.fromarray(data.astronaut())
        cases = []
        for size in args.sizes:
            image = photo.resize((size, size), Image.Resampling.LANCZOS)
            source = encode_image(image, "jpeg", 92)[0]
            parent = OutputSigner.parent(source, "image/jpeg", "inbox/img2img/astronaut.jpg")
            for fmt in ("png", "jpeg", "webp"):
                out, mime = encode_image(image, fmt, 90, xmp=xmp_packet(made.source_type))
                cases.append((f"{fmt} {size}²", out, mime, parent))
        clip = sample_clip(2.0, fps=24, size=(320, 240), noise=2)
        cases.append(("mp4 320x240 2 s", clip, "video/mp4", OutputSigner.parent(clip, "video/mp4", "in.mp4")))

        print(f"Command: `python -m bench.credentials --repeat {args.repeat} --sizes "
              f"{' '.join(map(str, args.sizes))}`; {os.cpu_count()} CPUs, Python {platform.python_version()}, "
              f"c2pa-python {c2pa.__version__} (c2pa-rs {c2pa.sdk_version()}), ES256, thumbnails off, no TSA.\n")
        print("| output | bytes before | bytes added | sign + read back, median ms (p90) | "
              "sign only, median ms | read back only, median ms |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, out, mime, parent in cases:
            definition = OutputSigner.definition(title="out", content_type=mime, job_id="bench", recipe="img2img",
                                                 params=params, result=result, made=made, parent=parent,
                                                 input_key="inbox/img2img/astronaut.jpg")

            def full(out=out, mime=mime, parent=parent):
                return signer.sign(out, mime, title="out", job_id="bench", recipe="img2img", params=params,
                                   result=result, made=made, parent=parent, input_key="inbox/img2img/astronaut.jpg")

            signed, creds = full()
            assert creds.validation_state == "Trusted", creds
            total, total_p90 = timed(full, args.repeat)
            sign_only, _ = timed(lambda out=out, mime=mime, parent=parent, d=definition:
                               signer.signer.sign(out, mime, d, parent), args.repeat)
            read_only, _ = timed(lambda s=signed, mime=mime: read_credentials(s, mime, anchors=signer.signer.anchors),
                               args.repeat)
            print(f"| {name} | {len(out):,} | {len(signed) - len(out):,} | {total:.1f} ({total_p90:.1f}) | "
                  f"{sign_only:.1f} | {read_only:.1f} |")


def pipeline(n: int) -> None:
    """PUT -> final manifest for ``n`` filter jobs, content credentials on vs off."""
    import io

    from bench.stack import pct, private_stack, upload_and_wait
    from bucketbrush.store import Bucket

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((512, 512)).save(buf, "PNG")
    body, rows = buf.getvalue(), {}
    for on in (True, False):
        with private_stack(content_credentials=on) as stack:
            bucket = Bucket(stack.settings_for_clients())
            rows[on] = []
            for i in range(n + 1):
                t0, m = upload_and_wait(bucket, f"inbox/filter/bench/{i}.png", body, style="sepia")
                assert (m.outputs[0].content_credentials is not None) == on
                if i:  # the first is a warm-up
                    t = m.timings
                    rows[on].append({"total": t["finished_at"] - t0,
                                     "runner": t["finished_at"] - t["started_at"] - t["processing_s"],
                                     "bytes": m.outputs[0].bytes})
    print(f"\nPipeline: `--pipeline {n}`: {n} sequential 512² PNG uploads, filter/sepia, one private stack each.\n")
    print("| content credentials | PUT -> final p50 ms | p95 ms | runner outside the recipe p50 ms | output bytes |")
    print("|---|---:|---:|---:|---:|")
    for on in (True, False):
        total = [r["total"] * 1000 for r in rows[on]]
        runner = [r["runner"] * 1000 for r in rows[on]]
        print(f"| {'on' if on else 'off'} | {pct(total, 50):.1f} | {pct(total, 95):.1f} | {pct(runner, 50):.1f} | "
              f"{rows[on][0]['bytes']:,} |")


if __name__ == "__main__":
    main()
