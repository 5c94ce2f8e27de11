"""Drives a running mediagate with the official OpenAI Python SDK, unchanged, as a
customer's code would: models, images (base64, links, n=2), videos (create_and_poll,
download_content of the video and its thumbnail, list, remix, delete) and the
exceptions the SDK raises for our errors.

argv: base URL (ending in /v1) and an API key. Exits non-zero, saying which check
failed, if any does; prints "ok" otherwise."""

import base64
import sys
import urllib.request

import openai

PNG = b"\x89PNG\r\n\x1a\n"

base_url, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)


def check(cond, what):
    if not cond:
        sys.exit(f"check failed: {what}")


# models.list: a valid models page, our catalog in it.
models = {m.id: m for m in client.models.list()}
check("local/video" in models and "local/image" in models, f"models: {sorted(models)}")
check(models["local/video"].object == "model" and models["local/video"].created > 0, "model fields")
check(models["local/video"].owned_by == "local", "owned_by")

# images.generate: base64 by default, n=2, two different pictures.
res = client.images.generate(model="local/image", prompt="two foxes", n=2, size="64x64")
check(res.created > 0 and len(res.data) == 2, f"images: {res}")
pictures = [base64.b64decode(d.b64_json) for d in res.data]
check(all(p.startswith(PNG) for p in pictures), "images are PNGs")
check(pictures[0] != pictures[1], "n=2 gives two pictures")
# response_format="url": our signed link, which needs no key.
res = client.images.generate(model="local/image", prompt="a fox", size="64x64", response_format="url")
check(res.data[0].url and not res.data[0].b64_json, f"url: {res}")
check(urllib.request.urlopen(res.data[0].url).read().startswith(PNG), "the link serves the PNG")

# videos: create_and_poll as the SDK does it (multipart, seconds as a string, the
# openai-poll-after-ms header between polls), then download_content.
video = client.videos.create_and_poll(model="local/video", prompt="a red fox", seconds="1", size="640x360")
check(video.status == "completed", f"create_and_poll: {video}")
check(video.seconds == "1" and video.size == "640x360" and video.progress == 100, f"video: {video}")
mp4 = client.videos.download_content(video.id).read()
check(mp4[4:8] == b"ftyp", "the video is an MP4")
thumb = client.videos.download_content(video.id, variant="thumbnail").read()
check(thumb.startswith(PNG), "the thumbnail is a PNG")

remix = client.videos.remix(video.id, prompt="the fox, at night")
check(remix.remixed_from_video_id == video.id, f"remix: {remix}")
remix = client.videos.poll(remix.id)
check(remix.status == "completed", f"remix finished: {remix}")

# list pages through everything with after/last_id, one a page.
seen = [v.id for v in client.videos.list(limit=1, order="asc")]
check(seen == [video.id, remix.id], f"list asc: {seen}")
seen = [v.id for v in client.videos.list(order="desc")]
check(seen == [remix.id, video.id], f"list desc: {seen}")

deleted = client.videos.delete(video.id)
check(deleted.deleted is True and deleted.id == video.id and deleted.object == "video.deleted", f"delete: {deleted}")

# Our errors as the SDK's exceptions.
try:
    client.videos.retrieve(video.id)
    check(False, "a deleted video is gone")
except openai.NotFoundError:
    pass
try:
    client.images.generate(model="local/image", prompt="x", quality="high")
    check(False, "quality refused")
except openai.BadRequestError as e:
    check(e.body.get("param") == "quality", f"param: {e.body}")
try:
    client.videos.create(model="local/video", prompt="x", seconds="soon")
    check(False, "seconds refused")
except openai.BadRequestError as e:
    check(e.body.get("param") == "seconds", f"param: {e.body}")
try:
    openai.OpenAI(base_url=base_url, api_key="mg_wrong", max_retries=0).models.list()
    check(False, "a bad key is refused")
except openai.AuthenticationError:
    pass

print("ok")
