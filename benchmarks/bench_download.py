"""Download throughput of `lanex data download` from a private source: HTTP with a header, Blob with a SAS.

    python benchmarks/bench_download.py [--mib 256] [--repeats 3]

One random file is served on 127.0.0.1 by an HTTP server that demands an Authorization header, and
by Azurite (the Azure Storage emulator, `make azurite`) read through an az:// URL with a SAS. Each
download is checksummed (SHA-256) as in the prepare Job. Prints MiB/s (median of the repeats) per
path and a one-line summary. Both servers share the machine's cores with the client.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from azurite import ACCOUNT, ACCOUNT_KEY, AzuriteError, azurite_blob  # noqa: E402
from lanex_trainer.data.download import Credentials, RetryPolicy, download_all  # noqa: E402

TOKEN = "Bearer bench"


def _http_server(path: Path) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            if self.headers.get("Authorization") != TOKEN:
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(path.stat().st_size))
            self.end_headers()
            with path.open("rb") as handle:
                while block := handle.read(1 << 20):
                    self.wfile.write(block)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Thread(target=server.serve_forever, daemon=True).start()
    return server


def _timed(url: str, digest: str, credentials: Credentials, out: Path) -> float:
    start = time.perf_counter()
    download_all([url], [digest], out, extract=False, credentials=credentials, policy=RetryPolicy(attempts=1))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="File size in MiB.")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-download-") as folder:
        work = Path(folder)
        source = work / "train_set.zip"
        with source.open("wb") as handle:
            for _ in range(args.mib):
                handle.write(os.urandom(1 << 20))
        digest = hashlib.sha256(source.read_bytes()).hexdigest()

        server = _http_server(source)
        url = f"http://127.0.0.1:{server.server_address[1]}/train_set.zip"
        header = Credentials(headers=(("Authorization", TOKEN),))
        seconds = [_timed(url, digest, header, work / f"http-{n}") for n in range(args.repeats)]
        server.shutdown()
        results["http+header"] = args.mib / statistics.median(seconds)
        print(f"HTTP with Authorization header: {args.mib} MiB in {statistics.median(seconds):.2f} s "
              f"(median of {args.repeats}): {results['http+header']:.0f} MiB/s", flush=True)

        try:
            from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

            with azurite_blob(work / "azurite") as endpoint:
                service = BlobServiceClient(endpoint, credential={"account_name": ACCOUNT, "account_key": ACCOUNT_KEY})
                container = service.get_container_client("bench")
                container.create_container()
                with source.open("rb") as handle:
                    container.upload_blob("train_set.zip", handle, max_concurrency=2)
                sas = generate_container_sas(ACCOUNT, "bench", account_key=ACCOUNT_KEY,
                                             permission=ContainerSasPermissions(read=True),
                                             expiry=datetime.now(timezone.utc) + timedelta(hours=1))
                os.environ["LANEX_BLOB_ENDPOINT"] = endpoint.replace(ACCOUNT, "{account}")
                seconds = [_timed(f"az://{ACCOUNT}/bench/train_set.zip", digest, Credentials(sas=sas), work / f"az-{n}")
                           for n in range(args.repeats)]
            results["az+sas"] = args.mib / statistics.median(seconds)
            print(f"Azure Blob (Azurite) with SAS: {args.mib} MiB in {statistics.median(seconds):.2f} s "
                  f"(median of {args.repeats}): {results['az+sas']:.0f} MiB/s", flush=True)
        except AzuriteError as error:
            print(f"Azure Blob: skipped ({error})")
    print("download (checksummed): " + ", ".join(f"{name} {rate:.0f} MiB/s" for name, rate in results.items()))


if __name__ == "__main__":
    main()
