"""C2PA Content Credentials: dev certificates, signing configuration, sign and read back."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import stat
import struct
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from PIL import Image

from tasks.labels.provenance import (
    AIGC_ASSERTION,
    ProvenanceError,
    SigningConfig,
    load_signing_config,
    make_dev_cert,
    manifest_definition,
    read_c2pa,
    sign,
)
from tasks.labels.watermark import (
    DIGITAL_SOURCE_TYPE_AI,
    ImplicitLabel,
    LabelSpec,
    OutputSpec,
    label_image,
    read_labels,
)

IMPLICIT = ImplicitLabel(content_producer="91310000DEMO00001X", produce_id="3f0c2a9b1d4e")
ENV_VARS = ("ZPIPE_C2PA_CERT", "ZPIPE_C2PA_KEY", "ZPIPE_C2PA_CERT_PEM", "ZPIPE_C2PA_KEY_PEM",
            "ZPIPE_C2PA_TSA_URL")


@pytest.fixture(scope="module")
def dev_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_dev_cert(tmp_path_factory.mktemp("dev-cert"))


@pytest.fixture(scope="module")
def config(dev_cert: tuple[Path, Path, Path]) -> SigningConfig:
    _ca, chain, key = dev_cert
    return SigningConfig(cert_chain_pem=chain.read_bytes(), private_key_pem=key.read_bytes())


@pytest.fixture(scope="module")
def ca_pem(dev_cert: tuple[Path, Path, Path]) -> bytes:
    return dev_cert[0].read_bytes()


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _labelled(output: str = "jpeg", size: tuple[int, int] = (368, 640)) -> bytes:
    rng = np.random.default_rng(3)
    picture = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    picture.save(buf, "PNG")
    data, _ = label_image(buf.getvalue(), LabelSpec(), None, None, IMPLICIT, OutputSpec(format=output))
    return data


def _sign(data: bytes, output: str, config: SigningConfig) -> bytes:
    return sign(data, f"image/{output}", IMPLICIT.to_tc260_json(), IMPLICIT.produce_id, config)


# --- Dev certificate ---------------------------------------------------------------------


def test_dev_cert_makes_a_ca_and_an_es256_signing_certificate(dev_cert) -> None:
    ca_path, chain_path, key_path = dev_cert
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    (leaf,) = x509.load_pem_x509_certificates(chain_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)

    # the root: a CA that signed the leaf
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.issuer == ca.subject != leaf.subject
    ca.public_key().verify(leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))

    # the leaf: what C2PA's certificate profile demands
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert leaf.public_key() == key.public_key()
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    ekus = list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert ekus == [ExtendedKeyUsageOID.EMAIL_PROTECTION]
    leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    now = dt.datetime.now(dt.UTC)
    assert leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc <= ca.not_valid_after_utc


def test_dev_cert_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    _ca, _chain, key = make_dev_cert(tmp_path)
    before = key.read_bytes()
    with pytest.raises(ProvenanceError, match=r"already exist.*--force"):
        make_dev_cert(tmp_path)
    assert key.read_bytes() == before
    make_dev_cert(tmp_path, overwrite=True)
    assert key.read_bytes() != before and stat.S_IMODE(os.stat(key).st_mode) == 0o600


# --- Signing configuration from the environment -----------------------------------------


def test_signing_is_off_when_nothing_is_configured(clean_env) -> None:
    assert load_signing_config() is None


def test_signing_config_from_files_and_from_contents(clean_env, dev_cert) -> None:
    _ca, chain, key = dev_cert
    clean_env.setenv("ZPIPE_C2PA_CERT", str(chain))
    clean_env.setenv("ZPIPE_C2PA_KEY", str(key))
    from_files = load_signing_config()
    assert from_files is not None and from_files.cert_chain_pem == chain.read_bytes()

    clean_env.delenv("ZPIPE_C2PA_CERT")
    clean_env.delenv("ZPIPE_C2PA_KEY")
    clean_env.setenv("ZPIPE_C2PA_CERT_PEM", chain.read_text())
    clean_env.setenv("ZPIPE_C2PA_KEY_PEM", key.read_text())
    from_pem = load_signing_config()
    assert from_pem == from_files
    assert "PRIVATE KEY" not in repr(from_pem)  # never in logs


def test_half_configured_signing_names_what_is_missing(clean_env, dev_cert) -> None:
    clean_env.setenv("ZPIPE_C2PA_CERT", str(dev_cert[1]))
    with pytest.raises(ProvenanceError, match=r"half configured.*ZPIPE_C2PA_KEY or ZPIPE_C2PA_KEY_PEM"):
        load_signing_config()
    clean_env.delenv("ZPIPE_C2PA_CERT")
    clean_env.setenv("ZPIPE_C2PA_KEY_PEM", dev_cert[2].read_text())
    with pytest.raises(ProvenanceError, match="ZPIPE_C2PA_CERT or ZPIPE_C2PA_CERT_PEM is not"):
        load_signing_config()


def test_unreadable_or_wrong_credentials_are_clear_and_keep_the_key_secret(clean_env, dev_cert,
                                                                          tmp_path) -> None:
    _ca, chain, key = dev_cert
    secret = key.read_text().splitlines()[1]

    clean_env.setenv("ZPIPE_C2PA_CERT", str(chain))
    clean_env.setenv("ZPIPE_C2PA_KEY", str(tmp_path / "nope.pem"))
    with pytest.raises(ProvenanceError, match=r"ZPIPE_C2PA_KEY: cannot read .*nope\.pem"):
        load_signing_config()

    clean_env.setenv("ZPIPE_C2PA_KEY_PEM", key.read_text())
    with pytest.raises(ProvenanceError, match="both ZPIPE_C2PA_KEY and ZPIPE_C2PA_KEY_PEM"):
        load_signing_config()

    other = make_dev_cert(tmp_path / "other")[2]  # a key that is not the certificate's
    clean_env.delenv("ZPIPE_C2PA_KEY_PEM")
    clean_env.setenv("ZPIPE_C2PA_KEY", str(other))
    with pytest.raises(ProvenanceError, match="does not match the first certificate") as info:
        load_signing_config()
    assert secret not in str(info.value)

    clean_env.setenv("ZPIPE_C2PA_KEY", str(chain))  # a certificate where the key should be
    with pytest.raises(ProvenanceError, match="not an unencrypted PEM private key"):
        load_signing_config()


def test_a_certificate_c2pa_refuses_fails_at_configuration(clean_env, tmp_path) -> None:
    # a self-signed leaf without extended key usage: c2pa's certificate profile rejects it
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "self-signed")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    clean_env.setenv("ZPIPE_C2PA_CERT_PEM", cert.public_bytes(serialization.Encoding.PEM).decode())
    clean_env.setenv("ZPIPE_C2PA_KEY_PEM", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode())
    with pytest.raises(ProvenanceError, match="ZPIPE_C2PA_CERT_PEM: c2pa refuses this certificate"):
        load_signing_config()


# --- Sign and read -----------------------------------------------------------------------


def test_manifest_declares_ai_creation_and_carries_the_tc260_label() -> None:
    manifest = manifest_definition(IMPLICIT.to_tc260_json(), "3f0c2a9b1d4e", "image/jpeg")
    assert manifest["claim_generator_info"] == [{"name": "zpipe", "version": "0.1"}]
    actions = manifest["assertions"][0]
    assert actions["label"] == "c2pa.actions"
    assert actions["data"]["actions"][0]["action"] == "c2pa.created"
    assert actions["data"]["actions"][0]["digitalSourceType"] == DIGITAL_SOURCE_TYPE_AI
    custom = manifest["assertions"][1]
    assert custom["label"] == AIGC_ASSERTION == "cn.zpipe.aigc"
    assert custom["data"]["tc260"] == json.loads(IMPLICIT.to_tc260_json())
    assert custom["data"]["content_id"] == "3f0c2a9b1d4e"
    with pytest.raises(ProvenanceError, match="not JSON"):
        manifest_definition("{broken", "3f0c2a9b1d4e", "image/jpeg")


@pytest.mark.parametrize("output", ["jpeg", "png", "webp"])
def test_signed_image_is_trusted_with_the_dev_ca(output: str, config, ca_pem) -> None:
    signed = _sign(_labelled(output), output, config)
    found = read_c2pa(signed, f"image/{output}", ca_pem)
    assert found.state == "trusted", found.reasons
    assert found.reasons == []
    manifest = found.manifest
    assert manifest is not None
    assert manifest["claim_generator_info"][0]["name"] == "zpipe"
    assert manifest["claim_generator_info"][0]["version"] == "0.1"
    assert "thumbnail" not in manifest  # the embedded thumbnail is off
    actions = found.assertion("c2pa.actions.v2")["actions"]
    assert [(a["action"], a["digitalSourceType"]) for a in actions] == [
        ("c2pa.created", DIGITAL_SOURCE_TYPE_AI)]
    assert found.aigc["content_id"] == IMPLICIT.produce_id
    assert found.aigc["tc260"] == json.loads(IMPLICIT.to_tc260_json())


def test_without_trust_anchors_a_good_signature_is_valid_not_trusted(config) -> None:
    signed = _sign(_labelled(), "jpeg", config)
    found = read_c2pa(signed, "image/jpeg", None)
    assert found.state == "valid"  # what c2pa reports for a chain to an unknown root
    assert any(r.startswith("signingCredential.untrusted") for r in found.reasons), found.reasons


def test_a_flipped_byte_in_the_image_data_makes_it_invalid(config, ca_pem) -> None:
    signed = bytearray(_sign(_labelled(), "jpeg", config))
    signed[-200] ^= 0x01  # inside the entropy-coded image data, far from the manifest
    found = read_c2pa(bytes(signed), "image/jpeg", ca_pem)
    assert found.state == "invalid"
    assert any("assertion.dataHash.mismatch" in r for r in found.reasons), found.reasons


def test_an_unsigned_image_has_no_c2pa(ca_pem) -> None:
    found = read_c2pa(_labelled(), "image/jpeg", ca_pem)
    assert found.state == "absent" and found.manifest is None


def _riff_chunks(data: bytes) -> list[bytes]:
    chunks, i = [], 12
    while i < len(data):
        size = struct.unpack("<I", data[i + 4:i + 8])[0]
        chunks.append(data[i:i + 8 + size + (size & 1)])
        i += 8 + size + (size & 1)
    return chunks


@pytest.mark.parametrize("output", ["jpeg", "png", "webp"])
def test_sign_inserts_the_manifest_without_re_encoding(output: str, config) -> None:
    labelled = _labelled(output)
    signed = _sign(labelled, output, config)

    # the pixels and the XMP labels are untouched
    before, after = (np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in (labelled, signed))
    assert np.array_equal(before, after)
    assert read_labels(signed) == read_labels(labelled)

    # only metadata was added: the original bytes are all there, in order
    if output == "webp":
        original = _riff_chunks(labelled)
        added = _riff_chunks(signed)
        assert [c for c in added if c[:4] != b"C2PA"] == original
    else:
        prefix = next(i for i, (a, b) in enumerate(zip(labelled, signed, strict=False)) if a != b)
        assert signed[len(signed) - (len(labelled) - prefix):] == labelled[prefix:]
    assert 0 < len(signed) - len(labelled) < 10_000  # a few KB: no thumbnail


def test_sign_refuses_what_it_cannot_sign(config) -> None:
    jpeg = _labelled("jpeg")
    with pytest.raises(ProvenanceError, match="are not image/png"):
        sign(jpeg, "image/png", IMPLICIT.to_tc260_json(), IMPLICIT.produce_id, config)
    with pytest.raises(ProvenanceError, match="cannot sign 'image/gif'"):
        sign(jpeg, "image/gif", IMPLICIT.to_tc260_json(), IMPLICIT.produce_id, config)
