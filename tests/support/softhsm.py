"""A throw-away SoftHSM2 token for tests: its own config and token directory in a temp dir.

SoftHSM2 reads ``SOFTHSM2_CONF`` once, when a process first initializes the PKCS#11 module,
so a test session should create one token (see the ``softhsm`` fixture in test_signers.py)
and keep ``SOFTHSM2_CONF`` pointing at it. Keys are generated with python-pkcs11, the library
securesystemslib's ``HSMSigner`` uses.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: Where Debian's and other distributions' softhsm2 packages put the PKCS#11 module.
MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)


def find_module() -> str | None:
    """The SoftHSM2 PKCS#11 module (``SOFTHSM2_MODULE`` overrides), or None."""
    override = os.environ.get("SOFTHSM2_MODULE")
    if override:
        return override if Path(override).is_file() else None
    return next((p for p in MODULE_CANDIDATES if Path(p).is_file()), None)


def unavailable() -> str | None:
    """Why a SoftHSM2 token cannot be made here, or None when it can."""
    if find_module() is None:
        return "SoftHSM2 PKCS#11 module not found (install softhsm2 or set SOFTHSM2_MODULE)"
    if shutil.which("softhsm2-util") is None:
        return "softhsm2-util not found (install softhsm2)"
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        return "python-pkcs11 not installed (securesystemslib's hsm extra)"
    return None


@dataclass(frozen=True)
class Token:
    """An initialized token with one ECDSA P-256 key pair."""

    module: str
    conf: Path
    label: str
    pin: str
    hsm_keyid: int

    @property
    def uri(self) -> str:
        """The securesystemslib private key URI of the key."""
        return f"hsm:{self.hsm_keyid}?label={self.label}"


def create_token(
    directory: Path, *, label: str = "tuf-exporter-test", pin: str = "123456",
    so_pin: str = "12345678", hsm_keyid: int = 2,
) -> Token:
    """Initialize a token in ``directory`` and generate an ECDSA P-256 key with CKA_ID
    ``hsm_keyid``. Sets ``SOFTHSM2_CONF`` in this process's environment (callers restore it).
    """
    import pkcs11
    from pkcs11 import Attribute, KeyType
    from pkcs11.util.ec import encode_named_curve_parameters

    module = find_module()
    if module is None:
        raise RuntimeError(unavailable() or "SoftHSM2 not found")
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n",
        encoding="utf-8",
    )
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", label,
         "--so-pin", so_pin, "--pin", pin],
        check=True, capture_output=True, env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        timeout=30,
    )
    token = pkcs11.lib(module).get_token(token_label=label)
    with token.open(rw=True, user_pin=pin) as session:
        params = session.create_domain_parameters(
            KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
            local=True,
        )
        params.generate_keypair(store=True, id=hsm_keyid.to_bytes(1, "big"), label="probe")
    return Token(module, conf, label, pin, hsm_keyid)
