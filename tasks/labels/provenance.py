"""C2PA Content Credentials: sign the final image bytes, read them back, make a dev certificate.

The manifest says what the visible and XMP labels say, in a form that any C2PA reader can
check cryptographically:

- claim generator `zpipe/0.1`;
- `c2pa.actions`: one `c2pa.created` action with `digitalSourceType`
  `http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia`;
- `cn.zpipe.aigc`: the TC260 implicit label (the same JSON as XMP `TC260:AIGC`) and the
  image's content id;
- no embedded thumbnail (it would add ~90 KB; without it the manifest is ~3.3 KB).

Signing is the very last step: `sign` inserts the manifest into the exact bytes it is given
(a JPEG APP11 segment, a PNG `caBX` chunk, a WebP `C2PA` chunk) and never decodes or
re-encodes the image. Upload those bytes as they are: any later re-encode breaks the
manifest's hash (a reader then reports it Invalid).

Credentials come from the environment only (`load_signing_config`); `zpipe provenance
dev-cert DIR` makes a local test CA and signing certificate. c2pa-python ships a native
library and works offline; it is imported lazily.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from tasks.core.errors import ZpipeError
from tasks.core.settings import env_name, env_raw
from tasks.labels.watermark import DIGITAL_SOURCE_TYPE_AI

if TYPE_CHECKING:
    from cryptography import x509

CLAIM_GENERATOR = {"name": "zpipe", "version": "0.1"}  # shown by readers as "zpipe/0.1"
AIGC_ASSERTION = "cn.zpipe.aigc"  # reverse-DNS label of the custom assertion
SIGNABLE_TYPES = ("image/jpeg", "image/png", "image/webp")

ENV_CERT, ENV_KEY = env_name("c2pa_cert"), env_name("c2pa_key")  # file paths
ENV_CERT_PEM, ENV_KEY_PEM = env_name("c2pa_cert_pem"), env_name("c2pa_key_pem")  # PEM contents
ENV_TSA = env_name("c2pa_tsa_url")  # optional RFC 3161 time-stamp authority (needs network)
_FIELD = {ENV_CERT: "c2pa_cert", ENV_KEY: "c2pa_key", ENV_CERT_PEM: "c2pa_cert_pem",
          ENV_KEY_PEM: "c2pa_key_pem"}

DEV_CA_FILE, DEV_CHAIN_FILE, DEV_KEY_FILE = "ca.pem", "signer-chain.pem", "signer-key.pem"

_INSTALL = "pip install c2pa-python"
_DEV_CERT_HINT = "`zpipe provenance dev-cert DIR` makes a local test pair"
_MAGIC = {  # how each signable type starts: refuse bytes that are not what the caller says
    "image/jpeg": lambda d: d[:3] == b"\xff\xd8\xff",
    "image/png": lambda d: d[:8] == b"\x89PNG\r\n\x1a\n",
    "image/webp": lambda d: d[:4] == b"RIFF" and d[8:12] == b"WEBP",
}


class ProvenanceError(ZpipeError):
    """C2PA signing is misconfigured, or a manifest could not be made."""


# --- Signing configuration ---------------------------------------------------------------


@dataclass(frozen=True)
class SigningConfig:
    """A PEM certificate chain (signer first) and its ES256 (P-256) private key."""

    cert_chain_pem: bytes = field(repr=False)
    private_key_pem: bytes = field(repr=False)  # never shown in logs or tracebacks
    tsa_url: str | None = None


def load_signing_config() -> SigningConfig | None:
    """Read the signing credentials from the environment; None when signing is not configured.

    Certificate chain: `ZPIPE_C2PA_CERT` (a file) or `ZPIPE_C2PA_CERT_PEM` (its contents);
    key: `ZPIPE_C2PA_KEY` or `ZPIPE_C2PA_KEY_PEM`; optional `ZPIPE_C2PA_TSA_URL`. The pair is
    checked (parsed, matched, and one test signature made) so a bad certificate fails here,
    naming the variable, not at the first image. Key material never appears in an error.
    """
    cert = _read_credential(ENV_CERT, ENV_CERT_PEM)
    key = _read_credential(ENV_KEY, ENV_KEY_PEM)
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        have, missing = (f"{ENV_CERT}/{ENV_CERT_PEM}", f"{ENV_KEY} or {ENV_KEY_PEM}") if key is None \
            else (f"{ENV_KEY}/{ENV_KEY_PEM}", f"{ENV_CERT} or {ENV_CERT_PEM}")
        raise ProvenanceError(
            f"C2PA signing is half configured: {have} is set but {missing} is not; set both "
            f"(or neither, to publish without Content Credentials). {_DEV_CERT_HINT}"
        )
    config = SigningConfig(cert_chain_pem=cert[1], private_key_pem=key[1],
                           tsa_url=env_raw("c2pa_tsa_url"))
    check_signing_config(config, cert_source=cert[0], key_source=key[0])
    return config


def _read_credential(path_var: str, pem_var: str) -> tuple[str, bytes] | None:
    """(where it came from, PEM bytes) from a file-path or a contents variable, or None."""
    path, pem = env_raw(_FIELD[path_var]), env_raw(_FIELD[pem_var])
    if path and pem:
        raise ProvenanceError(f"both {path_var} and {pem_var} are set; set only one of them")
    if pem:
        return pem_var, pem.encode("utf-8")
    if not path:
        return None
    try:
        return f"{path_var}={path}", Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ProvenanceError(f"{path_var}: cannot read {path!r}: {exc.strerror or exc}") from None


def check_signing_config(config: SigningConfig, cert_source: str = "certificate chain",
                         key_source: str = "private key") -> None:
    """Raise ProvenanceError unless the chain and key parse, match, and c2pa accepts them."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    # 1. Parse (messages name the source, never the contents)
    chain = _load_chain(config.cert_chain_pem, cert_source)
    try:
        key = load_pem_private_key(config.private_key_pem, password=None)
    except (ValueError, TypeError):
        raise ProvenanceError(
            f"{key_source}: not an unencrypted PEM private key; use a PKCS#8 P-256 key "
            f"(-----BEGIN PRIVATE KEY-----). {_DEV_CERT_HINT}"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ProvenanceError(f"{key_source}: zpipe signs with ES256 and needs a P-256 (secp256r1) "
                              f"EC key (got {type(key).__name__}). {_DEV_CERT_HINT}")

    # 2. The key belongs to the first certificate, which is valid now
    leaf = chain[0]
    if leaf.public_key() != key.public_key():
        raise ProvenanceError(f"{key_source} does not match the first certificate in {cert_source} "
                              f"({leaf.subject.rfc4514_string()}); the signer's certificate goes first")
    now = dt.datetime.now(dt.UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise ProvenanceError(
            f"{cert_source}: certificate {leaf.subject.rfc4514_string()} is valid from "
            f"{leaf.not_valid_before_utc:%Y-%m-%d} to {leaf.not_valid_after_utc:%Y-%m-%d}, not now"
        )

    # 3. One test signature with c2pa's own checks on (certificate profile, EKU, chain)
    _self_test(config, cert_source)


def _load_chain(pem: bytes, source: str) -> list[x509.Certificate]:
    from cryptography import x509

    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ProvenanceError(f"{source}: no PEM certificates found "
                              "(-----BEGIN CERTIFICATE-----)") from None
    return chain


def _self_test(config: SigningConfig, source: str) -> None:
    """Raise ProvenanceError, naming `source`, if c2pa refuses to sign with `config`."""
    refusal = _c2pa_refusal(config)
    if refusal is not None:
        raise ProvenanceError(
            f"{source}: c2pa refuses this certificate: {refusal}. C2PA signing certificates need "
            "keyUsage digitalSignature, extendedKeyUsage emailProtection (no anyExtendedKeyUsage), "
            "basicConstraints CA:FALSE, an authorityKeyIdentifier, and must not be self-signed. "
            f"{_DEV_CERT_HINT}"
        )


@functools.lru_cache(maxsize=8)
def _c2pa_refusal(config: SigningConfig) -> str | None:
    """Sign a 16x16 PNG with verify-after-sign on: None if c2pa accepts it, else why not.

    Cached, so each configuration is tested once per process (~10 ms).
    """
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "PNG")
    try:
        _sign(buf.getvalue(), "image/png", json.dumps({"Label": "1"}), "000000000000", config,
              verify_after_sign=True)
    except ProvenanceError as exc:
        return str(exc)
    return None


# --- Sign --------------------------------------------------------------------------------


def manifest_definition(implicit_tc260_json: str, content_id: str, mime: str) -> dict[str, Any]:
    """The manifest zpipe signs: created by a trained model, plus the TC260 label and content id."""
    try:
        tc260 = json.loads(implicit_tc260_json)
    except json.JSONDecodeError as exc:
        raise ProvenanceError(f"implicit_tc260_json is not JSON ({implicit_tc260_json[:60]!r}): "
                              f"{exc}") from None
    if not isinstance(tc260, dict):
        raise ProvenanceError(f"implicit_tc260_json must be a JSON object (got {type(tc260).__name__})")
    ext = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}.get(mime, "bin")
    return {
        "claim_generator_info": [CLAIM_GENERATOR],
        "title": f"{content_id}.{ext}",
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [{
                "action": "c2pa.created",
                "digitalSourceType": DIGITAL_SOURCE_TYPE_AI,
                "softwareAgent": CLAIM_GENERATOR,
            }]}},
            {"label": AIGC_ASSERTION, "data": {
                "content_id": content_id,
                "xmp_property": "TC260:AIGC",
                "tc260": tc260,
                "digital_source_type": DIGITAL_SOURCE_TYPE_AI,
            }},
        ],
    }


def sign(data: bytes, mime: str, implicit_tc260_json: str, content_id: str,
         config: SigningConfig) -> bytes:
    """Return `data` with a signed C2PA manifest inserted; the image data itself is untouched.

    Call it last, on the bytes you upload (JPEG, PNG or WebP); re-encoding afterwards breaks
    the signature.
    """
    if mime not in SIGNABLE_TYPES:
        raise ProvenanceError(f"cannot sign {mime!r}; zpipe signs {', '.join(SIGNABLE_TYPES)}")
    if not _MAGIC[mime](data):
        raise ProvenanceError(f"the {len(data)} bytes to sign are not {mime} "
                              f"(they start with {data[:12]!r}); pass the encoded image's MIME type")
    _self_test(config, "the signing certificate")  # once per config (cached)
    return _sign(data, mime, implicit_tc260_json, content_id, config)


def _sign(data: bytes, mime: str, implicit_tc260_json: str, content_id: str,
          config: SigningConfig, verify_after_sign: bool = False) -> bytes:
    c2pa = _import_c2pa()
    manifest = manifest_definition(implicit_tc260_json, content_id, mime)
    settings = {
        "builder": {"thumbnail": {"enabled": False}},  # ~90 KB otherwise; the file is the image
        "verify": {"verify_after_sign": verify_after_sign},  # the self-test already did it
    }
    out = io.BytesIO()
    try:
        info = c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, config.cert_chain_pem,
                                   config.private_key_pem, config.tsa_url)
        with c2pa.Context.from_dict(settings) as context, c2pa.Signer.from_info(info) as signer, \
                c2pa.Builder(manifest, context=context) as builder:
            builder.sign(signer, mime, io.BytesIO(data), out)
    except c2pa.C2paError as exc:
        raise ProvenanceError(f"C2PA signing of {len(data)} bytes of {mime} failed: "
                              f"{_one_line(exc)}") from None
    return out.getvalue()


# --- Read --------------------------------------------------------------------------------


C2paStateName = Literal["absent", "valid", "trusted", "invalid"]


class C2paState(BaseModel):
    """What a C2PA reader found: absent, valid (signature checks, signer not trusted), trusted, invalid."""

    model_config = ConfigDict(extra="forbid")

    state: C2paStateName
    reasons: list[str]  # failure codes with explanations (empty when trusted)
    manifest: dict[str, Any] | None = None  # the active manifest, as c2pa reports it

    def assertion(self, label: str) -> Any:
        """The data of the active manifest's assertion `label`, or None."""
        for item in (self.manifest or {}).get("assertions", []):
            if item.get("label") == label:
                return item.get("data")
        return None

    @property
    def aigc(self) -> dict[str, Any] | None:
        """The `cn.zpipe.aigc` assertion: {content_id, tc260, ...}."""
        return self.assertion(AIGC_ASSERTION)


def read_c2pa(data: bytes, mime: str | None, trust_anchors_pem: bytes | None) -> C2paState:
    """Validate the C2PA manifest in `data`; `trusted` needs a chain ending at one of the anchors."""
    c2pa = _import_c2pa()
    # offline: no remote manifests, no OCSP fetches (the dev chain has no responder either)
    settings: dict[str, Any] = {
        "verify": {"verify_trust": True, "remote_manifest_fetch": False, "ocsp_fetch": False},
    }
    if trust_anchors_pem:
        load_trust_anchors(trust_anchors_pem)  # a clear error for a wrong file
        settings["trust"] = {"trust_anchors": trust_anchors_pem.decode("utf-8")}
    try:
        with c2pa.Context.from_dict(settings) as context:
            reader = c2pa.Reader.try_create(mime, io.BytesIO(data), None, context)
            if reader is None:
                return C2paState(state="absent", reasons=["no C2PA manifest in the file"])
            with reader:
                state = (reader.get_validation_state() or "").lower()
                results = reader.get_validation_results() or {}
                manifest = reader.get_active_manifest()
    except c2pa.C2paError as exc:
        return C2paState(state="invalid", reasons=[f"the C2PA manifest cannot be read: {_one_line(exc)}"])
    reasons = _failure_reasons(results)
    if state not in ("valid", "trusted", "invalid"):
        reasons.append(f"c2pa reported no known validation state ({state or 'none'!r})")
        state = "invalid"
    if state == "valid" and not trust_anchors_pem:
        reasons.append("no trust anchors given: the signer's certificate chain was not checked "
                       "against a CA (pass the CA with --trust)")
    return C2paState(state=state, reasons=reasons, manifest=manifest)  # type: ignore[arg-type]


def load_trust_anchors(pem: bytes) -> bytes:
    """Return `pem` if it holds PEM certificates (the CAs a reader trusts), else raise."""
    _load_chain(pem, "trust anchors")
    return pem


def _failure_reasons(results: dict[str, Any]) -> list[str]:
    """'code: explanation' for every failure, the active manifest's and its ingredients'."""
    failures = list((results.get("activeManifest") or {}).get("failure", []))
    for delta in results.get("ingredientDeltas", []) or []:
        failures += (delta.get("validationDeltas") or {}).get("failure", [])
    return [f"{f.get('code', '?')}: {f.get('explanation', '')}".rstrip(": ") for f in failures]


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _import_c2pa() -> Any:
    try:
        import c2pa
    except ImportError as exc:
        raise ProvenanceError(f"C2PA needs the c2pa-python package: {_INSTALL} ({exc})") from None
    return c2pa


# --- Dev certificate ---------------------------------------------------------------------


def make_dev_cert(directory: str | Path, days: int = 365,
                  overwrite: bool = False) -> tuple[Path, Path, Path]:
    """Make a local test root CA and an ES256 signing certificate it issued, for development.

    Writes `ca.pem` (the trust anchor for `zpipe verify --trust`), `signer-chain.pem` (the
    signing certificate) and `signer-key.pem` (mode 0600). The CA's own key is not kept, so
    the CA can issue nothing else. Returns (ca, chain, key) paths.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    # 1. Validate
    if not 1 <= days <= 3650:
        raise ProvenanceError(f"days must be 1..3650 (got {days})")
    directory = Path(directory).expanduser()
    paths = (directory / DEV_CA_FILE, directory / DEV_CHAIN_FILE, directory / DEV_KEY_FILE)
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise ProvenanceError(f"{', '.join(existing)} already exist; use another directory or "
                              "--force to replace them")

    # 2. Root CA (its key lives only in memory)
    now = dt.datetime.now(dt.UTC)
    start = now - dt.timedelta(minutes=5)  # tolerate a little clock skew between machines
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "zpipe development"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "zpipe dev root CA (not for production)")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(now + dt.timedelta(days=days + 1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    # 3. Signing certificate: what c2pa's certificate profile demands
    key = ec.generate_private_key(ec.SECP256R1())  # ES256
    signer = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "zpipe development"),
            x509.NameAttribute(NameOID.COMMON_NAME, "zpipe dev signer (not for production)"),
        ]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)  # digitalSignature only
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    # 4. Write: the key 0600 from the start, certificates world-readable
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(signer.public_bytes(pem))  # no intermediates: the signer alone
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write_private(paths[2], key_pem)
    return paths


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
        encipher_only=False, decipher_only=False,
    )


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to a file only its owner can read (created 0600, never wider)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # whatever the umask
        f.write(data)
