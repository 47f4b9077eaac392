"""Write workflows/NAME.jpg, the thumbnail ComfyUI's template browser shows for the UI workflow workflows/NAME.json.

    .venv/bin/python scripts/make_workflow_thumbnails.py [NAME ...]

The frontend asks a pack's templates for `/api/workflow_templates/<pack>/NAME.jpg` (mediaSubtype "jpg" for every
custom-node template; ComfyUI serves the pack's workflows/ folder there, app/custom_node_manager.py). Each thumbnail
is the workflow's own output: the test ComfyUI (tests/comfyui/comfy_harness.py) runs the API twin with the test-size
overrides of workflows/tests/NAME.test.json on the tiny random weights it declares, and up to four frames of the
first declared output, evenly spaced, become a 2 x 2 grid. A workflow the tests cannot run (it needs real weights) gets
a picture of its graph in ComfyUI's GUI instead. Tiny random weights make abstract pictures: replace them with
renders of the real models when available (same names, JPEG, ~512 px wide).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "comfyui"))

from comfy_harness import WORKFLOWS, ComfyServer, comfyui_dir, load_workflows, make_files  # noqa: E402

CELL = 256  # each frame fits a CELL x CELL square of the 2 x 2 grid
MAX_FRAMES = 4
WIDTH_LIMIT = 640  # graph pictures


def frames_of(path: Path) -> list:
    """The frames (PIL RGB) of an image, animated WEBP/GIF or video file."""
    from PIL import Image, ImageSequence

    if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".gif"):
        with Image.open(path) as im:
            return [f.convert("RGB") for f in ImageSequence.Iterator(im)]
    import av

    with av.open(str(path)) as container:
        return [f.to_image().convert("RGB") for f in container.decode(container.streams.video[0])]


def grid(frames: list):
    """Up to MAX_FRAMES frames, evenly spaced, in a 2 x 2 grid (one frame alone: just that frame), each scaled to fit
    a CELL square with its aspect ratio kept (the template browser shows a card, not a strip)."""
    from PIL import Image

    n = min(MAX_FRAMES, len(frames))
    picked = [frames[round(i * (len(frames) - 1) / max(n - 1, 1))] for i in range(n)]
    scale = min(CELL / picked[0].width, CELL / picked[0].height)
    w, h = max(1, round(picked[0].width * scale)), max(1, round(picked[0].height * scale))
    cols = 1 if n == 1 else 2
    rows = (n + cols - 1) // cols
    out = Image.new("RGB", (cols * w, rows * h), "white")
    for i, f in enumerate(picked):
        out.paste(f.resize((w, h), Image.BICUBIC), ((i % cols) * w, (i // cols) * h))
    return out


def output_frames(server: ComfyServer, wf) -> list:
    """Run the workflow at test size and return the frames of its first declared output."""
    ws = server.websocket()
    try:
        entry, _ = server.wait(server.queue(wf.prompt()), wf.timeout, ws=ws)
    finally:
        ws.close()
    if entry["status"]["status_str"] != "success":
        raise RuntimeError(f"{wf.name} failed: {entry['status']}")
    check = wf.meta["outputs"][0]
    item = entry["outputs"][str(check["node"])][check.get("key", "images")][0]
    return frames_of(server.output_file(item))


def graph_picture(server: ComfyServer, wf, tmp: Path):
    """The workflow's graph as ComfyUI's GUI shows it (headless Chromium)."""
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from gui import App, launch

    with sync_playwright() as pw:
        browser = launch(pw)
        try:
            app = App(browser, server.url)
            app.page.set_viewport_size({"width": 3000, "height": 1400})  # big enough to draw node text when fitted
            app.load_ui(wf.ui, f"{wf.name}.json")
            # the graph alone: fit it to the view, hide the menus and panels drawn over the canvas, clip to its nodes
            box = app.evaluate("""async () => {
                await window.app.extensionManager.command.execute("Comfy.Canvas.FitView");
                document.body.style.visibility = "hidden";
                window.app.canvasEl.style.visibility = "visible";
                const canvas = window.app.canvas, nodes = window.app.graph.nodes ?? window.app.graph._nodes;
                canvas.draw(true, true);
                const corners = nodes.flatMap(n => [canvas.ds.convertOffsetToCanvas([n.pos[0], n.pos[1] - 30]),
                    canvas.ds.convertOffsetToCanvas([n.pos[0] + n.size[0], n.pos[1] + n.size[1]])]);
                const rect = window.app.canvasEl.getBoundingClientRect();
                const xs = corners.map(c => c[0]), ys = corners.map(c => c[1]);
                return {x: rect.left + Math.min(...xs) - 20, y: rect.top + Math.min(...ys) - 20,
                        width: Math.max(...xs) - Math.min(...xs) + 40, height: Math.max(...ys) - Math.min(...ys) + 40};
            }""")
            app.page.wait_for_timeout(800)
            shot = tmp / f"{wf.name}.png"
            box = {k: max(0, v) for k, v in box.items()}
            app.page.screenshot(path=str(shot), clip=box)
        finally:
            browser.close()
    with Image.open(shot) as im:
        im = im.convert("RGB")
        return im.resize((WIDTH_LIMIT, round(im.height * WIDTH_LIMIT / im.width)), Image.BICUBIC)


def main(names: list[str]) -> int:
    workflows = [wf for wf in load_workflows() if not names or wf.name in names]
    missing = set(names) - {wf.name for wf in workflows}
    if missing:
        print(f"no such workflow(s): {sorted(missing)}", file=sys.stderr)
        return 2
    from gui import seed_settings

    with tempfile.TemporaryDirectory(prefix="svd-thumbs-") as tmp:
        base = Path(tmp)
        for wf in workflows:
            make_files(wf.meta.get("models", []), base / "models")
            make_files(wf.meta.get("inputs", []), base / "input")
        seed_settings(base)
        server = ComfyServer(base=base, comfy=comfyui_dir()).start()
        try:
            for wf in workflows:
                picture = grid(output_frames(server, wf)) if wf.run else graph_picture(server, wf, base)
                dest = WORKFLOWS / f"{wf.name}.jpg"
                partial = dest.with_suffix(".jpg.partial")
                picture.save(partial, "JPEG", quality=85, optimize=True)
                partial.replace(dest)  # written whole or not at all
                print(f"wrote workflows/{dest.name} ({picture.width}x{picture.height}, {dest.stat().st_size} bytes)")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
