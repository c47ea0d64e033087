"""Private copies of TuSimple: credentials from a mounted Secret, Azure Blob (Azurite), redaction.

The header path runs against a real HTTP server on 127.0.0.1 that refuses a request without the
right `Authorization`; the Blob path against Azurite, the official Azure Storage emulator (npm,
installed by `make azurite`), started here on 127.0.0.1 with a free port and stopped afterwards.
Every test also checks that the secret values appear in none of the command's output.
"""

from __future__ import annotations

import hashlib
import json
import time
import io
import os
import subprocess
import sys
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from azurite import ACCOUNT, ACCOUNT_KEY, AZURITE_BLOB, azurite_blob
from file_server import Served, file_server
from lanex_trainer.data.download import BlobAddress, DownloadError, blob_address, download_all, load_credentials

LANEX = str(Path(sys.executable).with_name("lanex"))
TOKEN = "Bearer lanex-test-0b5e1c2a9f"


def _archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("label_data_0531.json", "{}\n")
        bundle.writestr("clips/0531/1/20.jpg", os.urandom(300_000))  # bigger than one SDK chunk read
    return buffer.getvalue()


ARCHIVE = _archive()
ARCHIVE_SHA = hashlib.sha256(ARCHIVE).hexdigest()


def _secret(folder: Path, **keys: str) -> Path:
    folder.mkdir(parents=True)
    for key, value in keys.items():
        (folder / key).write_text(value)
    (folder / "..data").mkdir()  # what a Kubernetes Secret mount also holds: skipped
    return folder


def _download(*arguments: str, env: dict[str, str] | None = None, unset: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    environment = {name: value for name, value in {**os.environ, **(env or {})}.items() if name not in unset}
    return subprocess.run([LANEX, "data", "download", *arguments], capture_output=True, text=True, timeout=300,
                          env=environment)


# --- HTTP with a header Secret ----------------------------------------------------------------


def test_header_secret_is_sent_and_never_printed(tmp_path):
    credentials = _secret(tmp_path / "secret", Authorization=TOKEN)
    with file_server(Served(files={"/private/train_set.zip": ARCHIVE}, required_headers={"Authorization": TOKEN})) as served:
        result = _download("--url", f"{served.base}/private/train_set.zip", "--sha256", ARCHIVE_SHA,
                           "--out", str(tmp_path / "data"), "--credentials", str(credentials))
        assert result.returncode == 0, result.stderr
        assert served.requests[-1][1]["Authorization"] == TOKEN
    assert (tmp_path / "data" / "clips/0531/1/20.jpg").is_file()
    assert TOKEN not in result.stdout + result.stderr
    assert TOKEN.split()[1] not in (tmp_path / "data" / ".lanex-download-state.json").read_text()


def test_missing_or_wrong_header_fails_naming_the_url_not_the_secret(tmp_path):
    wrong = _secret(tmp_path / "wrong", Authorization="Bearer not-the-token-7731")
    with file_server(Served(files={"/private/train_set.zip": ARCHIVE}, required_headers={"Authorization": TOKEN})) as served:
        url = f"{served.base}/private/train_set.zip"
        anonymous = _download("--url", url, "--out", str(tmp_path / "a"))
        refused = _download("--url", url, "--out", str(tmp_path / "b"), "--credentials", str(wrong))
    assert anonymous.returncode == 1
    assert f"error: {url}: HTTP 401 Unauthorized (it needs credentials" in anonymous.stderr
    assert refused.returncode == 1
    assert "the credentials of its secretRef were refused" in refused.stderr
    assert "not-the-token-7731" not in refused.stdout + refused.stderr


def test_header_secret_is_not_forwarded_on_a_redirect_to_another_host(tmp_path):
    credentials = _secret(tmp_path / "secret", Authorization=TOKEN)
    with file_server(Served(files={"/mirror/train_set.zip": ARCHIVE})) as other, file_server() as first:
        first.redirects["/train_set.zip"] = f"{other.base}/mirror/train_set.zip"
        result = _download("--url", f"{first.base}/train_set.zip", "--out", str(tmp_path / "data"),
                           "--credentials", str(credentials), "--no-extract")
        assert result.returncode == 0, result.stderr
        assert first.requests[0][1]["Authorization"] == TOKEN
        assert "Authorization" not in other.requests[0][1]
    assert (tmp_path / "data" / "train_set.zip").read_bytes() == ARCHIVE


def test_sas_secret_is_appended_to_the_request_only_and_redacted_from_errors(tmp_path):
    sas = "sv=2024-05-04&sr=c&sp=r&sig=c2VjcmV0LXNpZ25hdHVyZQ%3D%3D"
    credentials = _secret(tmp_path / "secret", sas="?" + sas)
    with file_server(Served(files={"/c/train_set.zip": ARCHIVE})) as served:
        ok = _download("--url", f"{served.base}/c/train_set.zip", "--out", str(tmp_path / "a"),
                       "--credentials", str(credentials), "--no-extract")
        missing = _download("--url", f"{served.base}/c/absent.zip", "--out", str(tmp_path / "b"),
                            "--credentials", str(credentials))
        assert served.requests[0][0] == f"/c/train_set.zip?{sas}"
    assert ok.returncode == 0, ok.stderr
    assert missing.returncode == 1 and f"{served.base}/c/absent.zip: HTTP 404" in missing.stderr
    assert "sig=" not in ok.stdout + ok.stderr + missing.stdout + missing.stderr


def test_credentials_folder_problems_name_the_key_not_the_value(tmp_path):
    with pytest.raises(DownloadError, match=r"key 'bad header' is neither 'sas' nor an HTTP header name"):
        load_credentials(_secret(tmp_path / "a", **{"bad header": "x"}))
    with pytest.raises(DownloadError, match="key Authorization holds a line break"):
        load_credentials(_secret(tmp_path / "b", Authorization="Bearer a\nInjected: 1"))
    with pytest.raises(DownloadError, match="does not exist"):
        load_credentials(tmp_path / "absent")
    loaded = load_credentials(_secret(tmp_path / "c", Authorization="Bearer t\n", sas="?sv=1&sig=x"))
    assert loaded.headers == (("Authorization", "Bearer t"),) and loaded.sas == "sv=1&sig=x"


def test_blob_urls_of_both_spellings_name_account_container_and_blob(monkeypatch):
    monkeypatch.delenv("LANEX_BLOB_ENDPOINT", raising=False)
    assert blob_address("az://lanexdata/tusimple/v1/train_set.zip") == BlobAddress(
        "https://lanexdata.blob.core.windows.net", "tusimple", "v1/train_set.zip")
    assert blob_address("https://lanexdata.blob.core.windows.net/tusimple/test_label.json") == BlobAddress(
        "https://lanexdata.blob.core.windows.net", "tusimple", "test_label.json")
    assert blob_address("https://example.com/tusimple/test_label.json") is None
    with pytest.raises(DownloadError, match="expected az://ACCOUNT/CONTAINER/PATH"):
        blob_address("az://lanexdata/only-container")


# --- Azure Blob against Azurite ---------------------------------------------------------------


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory):
    """Azurite's blob service on 127.0.0.1 for this module; yields its account endpoint."""
    if not AZURITE_BLOB.exists():
        pytest.skip(f"Azurite is not installed at {AZURITE_BLOB}: run `make azurite` (scripts/install_azurite.sh)")
    with azurite_blob(tmp_path_factory.mktemp("azurite")) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def container(azurite):
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient(azurite, credential={"account_name": ACCOUNT, "account_key": ACCOUNT_KEY})
    client = service.get_container_client("tusimple")
    client.create_container()
    client.upload_blob("v1/train_set.zip", ARCHIVE)
    return client


def _sas(key: str = ACCOUNT_KEY) -> str:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    return generate_container_sas(ACCOUNT, "tusimple", account_key=key, permission=ContainerSasPermissions(read=True),
                                  expiry=datetime.now(timezone.utc) + timedelta(hours=1))


def test_az_url_with_a_sas_secret_downloads_verifies_and_extracts(azurite, container, tmp_path):
    sas = _sas()
    credentials = _secret(tmp_path / "secret", sas=sas)
    result = _download("--url", f"az://{ACCOUNT}/tusimple/v1/train_set.zip", "--sha256", ARCHIVE_SHA,
                       "--out", str(tmp_path / "data"), "--credentials", str(credentials),
                       env={"LANEX_BLOB_ENDPOINT": azurite.replace(ACCOUNT, "{account}")})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "train_set.zip").read_bytes() == ARCHIVE
    assert (tmp_path / "data" / "clips/0531/1/20.jpg").is_file()
    signature = dict(part.split("=", 1) for part in sas.split("&"))["sig"]
    assert signature not in result.stdout + result.stderr and "sig=" not in result.stdout + result.stderr


def test_blob_download_resumes_from_the_part_file_with_a_ranged_read(azurite, container, tmp_path, monkeypatch):
    monkeypatch.setenv("LANEX_BLOB_ENDPOINT", azurite.replace(ACCOUNT, "{account}"))
    out = tmp_path / "data"
    out.mkdir()
    kept = b"\0" * 100_000  # not the blob's bytes: only a resume at byte 100000 keeps them
    (out / "train_set.zip.part").write_bytes(kept)
    sas = load_credentials(_secret(tmp_path / "secret", sas=_sas()))
    [path] = download_all([f"az://{ACCOUNT}/tusimple/v1/train_set.zip"], [], out, extract=False, credentials=sas)
    assert path.read_bytes() == kept + ARCHIVE[len(kept):]


def test_blob_sas_signed_with_another_key_is_refused_without_printing_it(azurite, container, tmp_path):
    forged = _sas(key="QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=")
    credentials = _secret(tmp_path / "secret", sas=forged)
    result = _download("--url", f"az://{ACCOUNT}/tusimple/v1/train_set.zip", "--out", str(tmp_path / "data"),
                       "--credentials", str(credentials), env={"LANEX_BLOB_ENDPOINT": azurite.replace(ACCOUNT, "{account}")})
    assert result.returncode == 1
    assert f"error: az://{ACCOUNT}/tusimple/v1/train_set.zip: not authorised (HTTP 403): the SAS of its secretRef" \
           " was refused" in result.stderr
    signature = dict(part.split("=", 1) for part in forged.split("&"))["sig"]
    assert signature not in result.stdout + result.stderr


def test_blob_with_a_wrong_checksum_is_quarantined(azurite, container, tmp_path, monkeypatch):
    monkeypatch.setenv("LANEX_BLOB_ENDPOINT", azurite.replace(ACCOUNT, "{account}"))
    sas = load_credentials(_secret(tmp_path / "secret", sas=_sas()))
    with pytest.raises(DownloadError, match="checksum mismatch, expected sha256 0123abcd"):
        download_all([f"az://{ACCOUNT}/tusimple/v1/train_set.zip"], ["0123abcd" + "0" * 56], tmp_path / "data",
                     credentials=sas)
    assert (tmp_path / "data" / "train_set.zip.corrupt").read_bytes() == ARCHIVE


# --- Azure Blob with DefaultAzureCredential (a managed identity) against Azurite over HTTPS ----------


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (Azurite's HTTPS) and its key."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
                   .not_valid_after(now + timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "azurite.pem", folder / "azurite-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _unsigned_jwt() -> str:
    """An Entra ID-shaped access token for Azure Storage (Azurite's basic OAuth does not check signatures)."""
    import base64 as b64
    import json as js

    def part(value: dict) -> str:
        return b64.urlsafe_b64encode(js.dumps(value).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {"aud": "https://storage.azure.com", "iss": "https://sts.windows.net/00000000-0000-0000-0000-000000000001/",
              "iat": now - 60, "nbf": now - 60, "exp": now + 3600, "oid": "00000000-0000-0000-0000-000000000002"}
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def test_az_url_without_a_sas_reads_with_default_azure_credential(tmp_path):
    """No secretRef: the identity the pod runs as (here a managed-identity token endpoint) authorises the read."""
    token = _unsigned_jwt()
    identity_header = "lanex-test-identity-header"
    token_body = json.dumps({"access_token": token, "expires_on": str(int(time.time()) + 3600),
                             "resource": "https://storage.azure.com", "token_type": "Bearer"}).encode()
    cert, key = _self_signed(tmp_path)
    with file_server(Served(files={"/msi/token": token_body}, required_headers={"X-IDENTITY-HEADER": identity_header})) \
            as identity, azurite_blob(tmp_path / "azurite", tls=(cert, key)) as endpoint:
        from azure.storage.blob import BlobServiceClient

        service = BlobServiceClient(endpoint, credential={"account_name": ACCOUNT, "account_key": ACCOUNT_KEY},
                                    connection_verify=str(cert))
        service.get_container_client("tusimple").create_container()
        service.get_container_client("tusimple").upload_blob("train_set.zip", ARCHIVE)
        environment = {"LANEX_BLOB_ENDPOINT": endpoint.replace(ACCOUNT, "{account}"), "REQUESTS_CA_BUNDLE": str(cert),
                       # App Service's managed identity, the one DefaultAzureCredential can use off Azure
                       "IDENTITY_ENDPOINT": f"{identity.base}/msi/token", "IDENTITY_HEADER": identity_header}
        result = _download("--url", f"az://{ACCOUNT}/tusimple/train_set.zip", "--sha256", ARCHIVE_SHA,
                           "--out", str(tmp_path / "data"), env=environment,
                           unset=("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE"))
        assert result.returncode == 0, result.stderr
        assert [path.split("?")[0] for path, _ in identity.requests] == ["/msi/token"]
    assert (tmp_path / "data" / "clips/0531/1/20.jpg").is_file()
    assert token not in result.stdout + result.stderr


def test_a_header_secret_for_a_blob_url_is_refused_before_any_request_naming_the_secret_and_keys(tmp_path):
    """Blob reads send a SAS or an Azure identity's token: a Secret of HTTP headers would be silently ignored in
    favour of DefaultAzureCredential (the pod's identity), so the combination is refused instead."""
    headers = _secret(tmp_path / "tusimple-http", Authorization=TOKEN)
    for url in (f"az://{ACCOUNT}/tusimple/train_set.zip", f"https://{ACCOUNT}.blob.core.windows.net/tusimple/x.zip"):
        result = _download("--url", url, "--out", str(tmp_path / "data"), "--credentials", str(headers),
                           env={"LANEX_BLOB_ENDPOINT": "http://127.0.0.1:9/{account}"})  # a request would fail
        assert result.returncode != 0
        message = result.stderr
        assert ("an Azure Blob URL, but Secret 'tusimple-http' of its secretRef holds HTTP header key(s) "
                "Authorization, which Blob reads never send: put a SAS under key 'sas' into it") in message, message
        assert TOKEN not in result.stdout + message and "Connection refused" not in message
    both = _secret(tmp_path / "mixed", sas="sv=1&sig=abc", Authorization=TOKEN)
    with pytest.raises(DownloadError, match=r"holds HTTP header key\(s\) Authorization, .*its sas key is used; "
                                            r"remove them"):
        download_all([f"az://{ACCOUNT}/tusimple/train_set.zip"], [], tmp_path / "data", credentials=load_credentials(both))
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())
