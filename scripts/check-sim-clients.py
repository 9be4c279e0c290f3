#!/usr/bin/env python3
"""The official OpenAI Python client against `edir-synth sim`: chat with an image and a JSON
schema, an image edit, and embeddings must come back as replies the client parses.

Usage: scripts/check-sim-clients.py [PATH_TO_edir-synth]   (CI runs it; needs `pip install openai`)
"""
import base64
import json
import os
import subprocess
import sys
import tempfile

from openai import OpenAI

binary = sys.argv[1] if len(sys.argv) > 1 else "target/debug/edir-synth"
workdir = tempfile.mkdtemp()
subprocess.run([binary, "sim", "--scenes", "1", "--out", workdir, "--sizes", "128"], check=True, stdout=subprocess.DEVNULL)
png_path = os.path.join(workdir, "scene_00000.png")
server = subprocess.Popen([binary, "sim", "--port", "0"], stdout=subprocess.PIPE, text=True)
try:
    url = server.stdout.readline().split()[3]
    client = OpenAI(base_url=url, api_key="not-needed", max_retries=0, timeout=30)
    with open(os.path.join(os.path.dirname(__file__), "..", "prompts", "instruct.schema.json")) as f:
        schema = json.load(f)
    image = base64.b64encode(open(png_path, "rb").read()).decode()
    chat = client.chat.completions.create(
        model="Qwen/Qwen2.5-VL-32B-Instruct",
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "Edit type: color (attribute.color)\nAlso write 4 extra changes"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
        ]}],
        response_format={"type": "json_schema", "json_schema": {"name": "edit_instruction", "schema": schema, "strict": True}},
        seed=1,
    )
    instruction = json.loads(chat.choices[0].message.content)
    assert instruction["feasible"] is True and len(instruction["extra_changes"]) == 4, instruction
    assert chat.usage.prompt_tokens > 0
    with open(png_path, "rb") as f:
        edited = client.images.edit(image=f, prompt=instruction["edit"], model="Qwen/Qwen-Image-Edit",
                                    extra_body={"seed": 3, "num_inference_steps": 50, "true_cfg_scale": 4.0})
    png = base64.b64decode(edited.data[0].b64_json)
    assert png.startswith(b"\x89PNG"), png[:8]
    embeddings = client.embeddings.create(model="sim/embed-image", input=["a red ball", "a blue box"])
    assert len(embeddings.data) == 2 and len(embeddings.data[0].embedding) == 256
    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
        raise AssertionError("an unknown model must fail")
    except Exception as error:  # openai.NotFoundError
        assert getattr(error, "status_code", None) == 404, error
    print("openai client: chat, images.edit, embeddings and errors parse: 4 passed, 0 failed")
finally:
    server.terminate()
    server.wait(timeout=10)
