"""`zpipe verify`: the checks as functions, and the command as a user runs it (files and S3)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image, ImageFilter
from typer.testing import CliRunner

from flows.cli.verify import provenance_app, verify_command
from tasks.config.schema import BrandConfig, load_brand
from tasks.labels.provenance import SigningConfig, make_dev_cert, sign
from tasks.labels.verify import VerifyInputError, find_content_key, verify_bytes
from tasks.labels.watermark import (
    ImplicitLabel,
    LabelPlacement,
    OutputSpec,
    aigc_xmp,
    encode_image,
    label_image,
)
from tasks.store.objects import LocalStore

REPO = Path(__file__).resolve().parents[3]
CONTENT_ID = "3f0c2a9b1d4e"
STRIPPED = "no XMP TC260:AIGC label: the file was stripped of metadata"

app = typer.Typer(add_completion=False)
app.command("verify")(verify_command)
app.add_typer(provenance_app, name="provenance")
runner = CliRunner()


@pytest.fixture(scope="module")
def brand() -> BrandConfig:
    return load_brand(REPO / "configs/brands/demo.yaml")


@pytest.fixture(scope="module")
def dev_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_dev_cert(tmp_path_factory.mktemp("dev-cert"))


@pytest.fixture(scope="module")
def signing(dev_cert) -> SigningConfig:
    return SigningConfig(cert_chain_pem=dev_cert[1].read_bytes(), private_key_pem=dev_cert[2].read_bytes())


def _invisible():
    """tasks.labels.invisible (another engineer's module), or skip the test that needs it."""
    return pytest.importorskip("tasks.labels.invisible", reason="tasks.labels.invisible is not available")


def _mark(picture: Image.Image, content_id: str) -> Image.Image:
    """Embed the invisible watermark when tasks.labels.invisible exists (verify skips it otherwise)."""
    try:
        from tasks.labels import invisible
    except ImportError:
        return picture
    return invisible.embed(picture, content_id)


def _picture(size: tuple[int, int] = (368, 640), seed: int = 5) -> Image.Image:
    """A synthetic, photo-like picture (smooth colour noise) of `size`."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(noise).filter(ImageFilter.GaussianBlur(3))


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _labelled(brand: BrandConfig, content_id: str = CONTENT_ID, mark: str | None = CONTENT_ID,
              output: str = "jpeg", position: str | None = None) -> tuple[bytes, LabelPlacement]:
    """What the pipeline publishes: watermark, then the labels (tasks.labels.watermark.label_image)."""
    picture = _picture()
    if mark is not None:
        picture = _mark(picture, mark)
    label = brand.label if position is None else brand.label.model_copy(update={"position": position})
    logo = (REPO / "configs/brands/demo-logo.png").read_bytes()
    implicit = ImplicitLabel(content_producer=brand.producer.id, produce_id=content_id)
    return label_image(_png(picture), label, logo, brand.logo, implicit, OutputSpec(format=output),
                       {"seed": "7", "contentId": content_id})


def _resave(data: bytes) -> bytes:
    """What a careless re-save does: Pillow drops the XMP."""
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _sidecar(key: str, placement: LabelPlacement, content_id: str = CONTENT_ID) -> dict:
    return {"schema": "zpipe.sidecar/1", "key": key, "content_id": content_id,
            "labels": {"explicit": placement.model_dump()}}


# --- verify_bytes ------------------------------------------------------------------------


def test_a_labelled_image_passes(brand) -> None:
    data, placement = _labelled(brand)
    report = verify_bytes(data, brand=brand, store=None, trust_anchors=None)
    assert report.ok, report.model_dump_json(indent=1)
    assert report.failures() == []
    assert report.explicit.status == "pass" and report.explicit.source == "brand"
    assert report.explicit.bbox == placement.bbox
    assert report.explicit.text_height_px >= report.explicit.min_required_px >= 0.05 * 368
    assert report.explicit.contrast_ratio >= 4.5 and report.explicit.text_match >= 0.8
    assert report.implicit.tc260["ProduceID"] == CONTENT_ID
    assert report.implicit.tc260["ContentProducer"] == brand.producer.id
    assert report.implicit.digital_source_type.endswith("/trainedAlgorithmicMedia")
    if report.watermark.status != "not_checked":
        assert report.watermark.required and report.watermark.content_id == CONTENT_ID
    assert report.c2pa.state == "absent" and not report.c2pa.required  # not asked for


def test_stripped_of_xmp_still_finds_the_watermark_but_fails_the_implicit_label(brand) -> None:
    _invisible()
    data, _ = _labelled(brand)
    report = verify_bytes(_resave(data), brand=brand, store=None, trust_anchors=None)
    assert not report.ok
    assert report.failures() == ["implicit"]
    assert report.implicit.messages[0].startswith(STRIPPED)
    assert report.watermark.found and report.watermark.content_id == CONTENT_ID
    assert report.explicit.status == "pass"


def test_a_picture_without_the_visible_label_fails_explicit(brand) -> None:
    implicit = ImplicitLabel(content_producer=brand.producer.id, produce_id=CONTENT_ID)
    data = encode_image(_mark(_picture(), CONTENT_ID), OutputSpec(), aigc_xmp(implicit))
    report = verify_bytes(data, brand=brand, store=None, trust_anchors=None)
    assert report.failures() == ["explicit"]
    assert "no label text at bottom-right" in report.explicit.messages[0]


def test_a_label_in_another_corner_is_found_and_named(brand) -> None:
    data, _ = _labelled(brand, position="bottom-left")
    report = verify_bytes(data, brand=brand, store=None, trust_anchors=None)
    assert report.failures() == ["explicit"]
    assert report.explicit.messages[0] == ("the label is at bottom-left, but the brand label spec "
                                           "puts it at bottom-right")


def test_the_sidecar_box_is_used_when_there_is_one(brand) -> None:
    data, placement = _labelled(brand, position="top-right")
    sidecar = _sidecar("demo/x.jpg", placement)
    report = verify_bytes(data, brand=None, store=None, trust_anchors=None, sidecar=sidecar)
    assert report.ok, report.model_dump_json(indent=1)
    assert report.explicit.source == "sidecar" and report.explicit.position == "top-right"


def test_another_producer_fails_the_implicit_label(brand) -> None:
    data, _ = _labelled(brand)
    other = brand.model_copy(update={"producer": brand.producer.model_copy(update={"id": "OTHER-1"})})
    report = verify_bytes(data, brand=other, store=None, trust_anchors=None)
    assert report.failures() == ["implicit"]
    assert "ContentProducer '91310000DEMO00001X' is not the brand's producer.id 'OTHER-1'" in \
        report.implicit.messages[0]


def test_a_watermark_of_another_image_fails(brand) -> None:
    _invisible()
    data, _ = _labelled(brand, mark="aaaaaaaaaaaa")
    report = verify_bytes(data, brand=brand, store=None, trust_anchors=None)
    assert report.failures() == ["watermark"]
    assert "content id aaaaaaaaaaaa differs from the label's 3f0c2a9b1d4e" in report.watermark.messages[0]


def test_an_unmarked_image_fails_the_watermark(brand) -> None:
    _invisible()
    data, _ = _labelled(brand, mark=None)
    report = verify_bytes(data, brand=brand, store=None, trust_anchors=None)
    assert report.failures() == ["watermark"] and report.watermark.found is False
    assert report.watermark.messages[0].startswith("no invisible watermark found")


def test_without_tasks_invisible_the_watermark_is_not_checked(brand, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tasks.labels.invisible", None)  # its import -> ImportError
    data, _ = _labelled(brand)
    report = verify_bytes(data, brand=brand, store=None, trust_anchors=None)
    assert report.ok
    assert report.watermark.status == "not_checked" and not report.watermark.required
    assert report.watermark.messages == ["watermark: not checked (tasks.labels.invisible unavailable)"]


def test_the_watermark_resolves_to_its_key_in_a_store(brand, tmp_path) -> None:
    _invisible()
    data, placement = _labelled(brand)
    store = LocalStore(tmp_path / "store")
    key = f"demo/weekly-demo/2026-W48/mon/9x16-v1-{CONTENT_ID}.jpg"
    store.put(key, data, "image/jpeg")
    store.put(f"{key}.json", json.dumps(_sidecar(key, placement)).encode(), "application/json")
    store.put("demo/other/a-v1-000000000000.jpg.json", b'{"content_id": "000000000000"}')
    assert find_content_key(store, CONTENT_ID) == key
    assert find_content_key(store, "ffffffffffff") is None
    report = verify_bytes(data, brand=brand, store=store, trust_anchors=None)
    assert report.ok and report.watermark.key == key


def test_c2pa_trusted_required_and_tampered(brand, signing, dev_cert) -> None:
    data, _ = _labelled(brand)
    ca = dev_cert[0].read_bytes()
    signed = sign(data, "image/jpeg", json.dumps({"Label": "1"}), CONTENT_ID, signing)

    trusted = verify_bytes(signed, brand=brand, store=None, trust_anchors=ca, require_c2pa=True)
    assert trusted.ok and trusted.c2pa.state == "trusted"
    assert trusted.c2pa.claim_generator == "zpipe/0.1" and trusted.c2pa.content_id == CONTENT_ID

    untrusted = verify_bytes(signed, brand=brand, store=None, trust_anchors=None, require_c2pa=True)
    assert untrusted.ok and untrusted.c2pa.state == "valid"  # no anchors: the signature is what counts

    absent = verify_bytes(data, brand=brand, store=None, trust_anchors=ca, require_c2pa=True)
    assert absent.failures() == ["c2pa"] and absent.c2pa.state == "absent"

    tampered = bytearray(signed)
    tampered[-300] ^= 0x01
    report = verify_bytes(bytes(tampered), brand=brand, store=None, trust_anchors=ca, require_c2pa=True)
    assert report.failures() == ["c2pa"] and report.c2pa.state == "invalid"
    assert any("assertion.dataHash.mismatch" in r for r in report.c2pa.reasons)
    assert report.c2pa.messages[0].startswith("the C2PA manifest is invalid")


def test_not_an_image_is_an_input_error() -> None:
    with pytest.raises(VerifyInputError, match=r"^poster\.jpg: not an image Pillow can read \(9 bytes\)"):
        verify_bytes(b"not a jpg", brand=None, store=None, trust_anchors=None, target="poster.jpg")


# --- The command -------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_cli_passes_a_labelled_file(brand, tmp_path) -> None:
    data, _ = _labelled(brand)
    target = _write(tmp_path / "poster.jpg", data)
    result = runner.invoke(app, ["verify", target, "--brand", str(REPO / "configs/brands/demo.yaml")])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output and "bottom-right" in result.output

    as_json = runner.invoke(app, ["verify", target, "--json"])
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)
    assert report["ok"] is True and report["implicit"]["tc260"]["ProduceID"] == CONTENT_ID
    assert report["explicit"]["source"] == "default"


def test_cli_exit_1_on_a_stripped_file_with_the_reason(brand, tmp_path) -> None:
    _invisible()
    data, _ = _labelled(brand)
    target = _write(tmp_path / "reposted.jpg", _resave(data))
    result = runner.invoke(app, ["verify", target])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "stripped of metadata" in result.output
    report = json.loads(runner.invoke(app, ["verify", target, "--json"]).stdout)
    assert report["implicit"]["messages"][0].startswith(STRIPPED)
    assert report["watermark"]["content_id"] == CONTENT_ID


def test_cli_exit_2_on_bad_input(tmp_path) -> None:
    missing = runner.invoke(app, ["verify", str(tmp_path / "nope.jpg")])
    assert missing.exit_code == 2 and "nope.jpg: no such file" in missing.output

    junk = runner.invoke(app, ["verify", _write(tmp_path / "junk.png", b"\x89PNG junk")])
    assert junk.exit_code == 2 and "junk.png: not an image" in junk.output

    image = _write(tmp_path / "plain.png", _png(_picture()))
    bad_trust = runner.invoke(app, ["verify", image, "--trust", _write(tmp_path / "ca.pem", b"hello")])
    assert bad_trust.exit_code == 2 and "trust anchors: no PEM certificates" in bad_trust.output

    bad_brand = runner.invoke(app, ["verify", image, "--brand", str(tmp_path / "brand.yaml")])
    assert bad_brand.exit_code == 2 and "brand.yaml" in bad_brand.output


def test_cli_requires_c2pa_when_asked(brand, signing, dev_cert, tmp_path) -> None:
    data, _ = _labelled(brand)
    signed = sign(data, "image/jpeg", json.dumps({"Label": "1"}), CONTENT_ID, signing)
    trust = str(dev_cert[0])
    ok = runner.invoke(app, ["verify", _write(tmp_path / "signed.jpg", signed), "--trust", trust,
                             "--require-c2pa"])
    assert ok.exit_code == 0, ok.output
    assert "trusted by zpipe/0.1" in ok.output

    unsigned = runner.invoke(app, ["verify", _write(tmp_path / "unsigned.jpg", data), "--trust", trust,
                                   "--require-c2pa", "--json"])
    assert unsigned.exit_code == 1
    assert json.loads(unsigned.stdout)["c2pa"]["state"] == "absent"


def test_cli_dev_cert(tmp_path) -> None:
    result = runner.invoke(app, ["provenance", "dev-cert", str(tmp_path / "certs")])
    assert result.exit_code == 0, result.output
    assert "ZPIPE_C2PA_CERT=" in result.output and "--trust" in result.output
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == [
        "ca.pem", "signer-chain.pem", "signer-key.pem"]
    again = runner.invoke(app, ["provenance", "dev-cert", str(tmp_path / "certs")])
    assert again.exit_code == 2 and "already exist" in again.output


@pytest.mark.s3
def test_cli_verifies_an_s3_object_with_its_sidecar(brand, s3_server, s3_bucket, monkeypatch) -> None:
    _invisible()
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    data, placement = _labelled(brand, position="top-right")  # the sidecar says where
    key = f"demo/weekly-demo/2026-W48/mon/9x16-v1-{CONTENT_ID}.jpg"
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key=key, Body=data, ContentType="image/jpeg")
    client.put_object(Bucket=s3_bucket, Key=f"{key}.json",
                      Body=json.dumps(_sidecar(key, placement)).encode())

    result = runner.invoke(app, ["verify", f"s3://{s3_bucket}/{key}", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["sidecar"] is True and report["explicit"]["source"] == "sidecar"
    assert report["explicit"]["position"] == "top-right"
    assert report["watermark"]["key"] == key  # resolved through the bucket's sidecars

    stripped = f"{key[:-4]}-reposted.jpg"
    client.put_object(Bucket=s3_bucket, Key=stripped, Body=_resave(data))
    failed = runner.invoke(app, ["verify", f"s3://{s3_bucket}/{stripped}", "--json"])
    assert failed.exit_code == 1
    report = json.loads(failed.stdout)
    assert report["implicit"]["messages"][0].startswith(STRIPPED)
    assert report["watermark"]["key"] == key  # the repost still leads back to the original

    missing = runner.invoke(app, ["verify", f"s3://{s3_bucket}/demo/none.jpg"])
    assert missing.exit_code == 2 and "demo/none.jpg" in missing.output


def test_cli_verifies_an_http_url(brand, tmp_path) -> None:
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    data, _ = _labelled(brand)
    (tmp_path / "poster.jpg").write_bytes(data)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        ok = runner.invoke(app, ["verify", f"{base}/poster.jpg", "--json"])
        assert ok.exit_code == 0, ok.output
        assert json.loads(ok.stdout)["target"] == f"{base}/poster.jpg"
        missing = runner.invoke(app, ["verify", f"{base}/none.jpg"])
        assert missing.exit_code == 2 and "none.jpg: HTTP 404" in missing.output
    finally:
        server.shutdown()
        server.server_close()
