"""Screenshots of each editing mode of `sae serve` for docs/editor.md, on any checkpoint (the
README uses the quickstart's model and PCA). Drives Debian's chromium through chromedriver
with plain WebDriver HTTP calls (no Selenium needed).

    python3 tools/editor-screenshots.py CHECKPOINT PCA LOAD_SIZE OUT_DIR [STRUCTURE TEXTURE]
(STRUCTURE and TEXTURE: image files to upload; default: the gallery's scene_a and scene_b)
(needs `cargo build --release -p sae-cli`, /usr/bin/chromium and /usr/bin/chromedriver)
"""
import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main():
    ckpt, pca, size, out = sys.argv[1:5]
    files = [os.path.abspath(f) for f in sys.argv[5:7]]
    os.makedirs(out, exist_ok=True)
    server = subprocess.Popen([f"{ROOT}/target/release/sae", "serve", "--checkpoint", ckpt,
                               "--pca", pca, "--load-size", size, "--port", "0"],
                              stdout=subprocess.PIPE, text=True)
    url = server.stdout.readline().strip().removeprefix("serving on ")
    port = free_port()
    driver = subprocess.Popen(["/usr/bin/chromedriver", f"--port={port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"

    def call(method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
        return json.load(urllib.request.urlopen(req))["value"]

    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/status")
                break
            except OSError:
                time.sleep(0.1)
        sid = call("POST", "/session", {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "goog:chromeOptions": {"binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--window-size=1320,800"]}}}})["sessionId"]
        s = f"/session/{sid}"

        def el(testid):
            v = call("POST", s + "/element", {"using": "css selector",
                                               "value": f"[data-testid={testid}]"})
            return next(iter(v.values()))

        def keys(testid, text):
            call("POST", f"{s}/element/{el(testid)}/value", {"text": text})

        def click(testid):
            call("POST", f"{s}/element/{el(testid)}/click", {})

        def settle():
            time.sleep(0.3)
            for _ in range(600):
                if call("POST", s + "/execute/sync", {"script":
                        "return !window.editor.busy && !window.editor.again", "args": []}):
                    return
                time.sleep(0.1)

        def shot(name):
            settle()
            with open(os.path.join(out, name), "wb") as f:
                f.write(base64.b64decode(call("GET", s + "/screenshot")))

        def drag(testid, pts):
            origin = {"element-6066-11e4-a52e-4f735466cecf": el(testid)}
            acts = [{"type": "pointerMove", "origin": origin, "x": pts[0][0], "y": pts[0][1]},
                    {"type": "pointerDown", "button": 0}]
            acts += [{"type": "pointerMove", "origin": origin, "x": x, "y": y, "duration": 50}
                     for x, y in pts[1:]]
            acts.append({"type": "pointerUp", "button": 0})
            call("POST", s + "/actions", {"actions": [{"type": "pointer", "id": "m",
                 "parameters": {"pointerType": "mouse"}, "actions": acts}]})

        call("POST", s + "/url", {"url": url})
        time.sleep(0.5)
        if files:
            keys("structure-input", files[0])
            settle()
            keys("texture-input", files[1])
        else:
            click("structure-gallery-scene_a")
            settle()
            click("texture-gallery-scene_b")
        keys("brush-size", "\ue011")  # Home: the smallest brush
        for _ in range(8):
            keys("brush-size", "\ue014")
        shot("editor-swap.png")
        keys("alpha", "\ue011")  # Home: α = 0
        for _ in range(50):
            keys("alpha", "\ue014")  # ArrowRight
        shot("editor-mix.png")
        keys("alpha", "\ue010")  # End: α = 1
        drag("mask-canvas", [(-110, 20), (110, 20), (110, 110), (-110, 110)])
        shot("editor-region-brush.png")
        click("clear-mask")
        click("mode-point")
        drag("mask-canvas", [(60, -60)])
        shot("editor-region-similar.png")
        keys("pca-component", "\ue015")
        keys("pca-strength", "\ue010")
        shot("editor-structure-edit.png")
        keys("pca-component", "\ue013")  # ArrowUp: none
        keys("pca-strength", "\ue011")
        click("clear-mask")
        keys("texture-component", "\ue015")
        keys("texture-strength", "\ue010")
        shot("editor-texture-edit.png")
        call("DELETE", s)
    finally:
        driver.kill()
        server.kill()


if __name__ == "__main__":
    main()
