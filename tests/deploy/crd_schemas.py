"""Strict JSON schemas for the custom resources we ship, which kubernetes-validate does not know.

Written from the cert-manager v1 and KServe v1beta1 API references, limited to the fields the
manifests use: a misspelt or misplaced field fails here as it would on a real API server.
"""

from __future__ import annotations

from typing import Any

_STR: dict[str, Any] = {"type": "string", "minLength": 1}
_NAME: dict[str, Any] = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"}


def _object(properties: dict[str, Any], *, required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


_METADATA = _object(
    {
        "name": _NAME,
        "namespace": _NAME,
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    required=("name",),
)
_ISSUER_REF = _object(
    {"name": _NAME, "kind": {"enum": ["Issuer", "ClusterIssuer"]}, "group": _STR},
    required=("name",),
)
_DURATION: dict[str, Any] = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(h|m|s))+$"}

ISSUER = _object(
    {
        "apiVersion": {"const": "cert-manager.io/v1"},
        "kind": {"const": "Issuer"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "properties": {
                "selfSigned": _object({}),
                "ca": _object({"secretName": _NAME}, required=("secretName",)),
            },
            "additionalProperties": False,
            "minProperties": 1,
            "maxProperties": 1,
        },
    },
    required=("apiVersion", "kind", "metadata", "spec"),
)

CERTIFICATE = _object(
    {
        "apiVersion": {"const": "cert-manager.io/v1"},
        "kind": {"const": "Certificate"},
        "metadata": _METADATA,
        "spec": _object(
            {
                "isCA": {"type": "boolean"},
                "commonName": {"type": "string", "maxLength": 64},
                "secretName": _NAME,
                "dnsNames": {"type": "array", "items": _STR, "minItems": 1},
                "duration": _DURATION,
                "renewBefore": _DURATION,
                "privateKey": _object(
                    {
                        "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                        "size": {"type": "integer"},
                        "rotationPolicy": {"enum": ["Never", "Always"]},
                        "encoding": {"enum": ["PKCS1", "PKCS8"]},
                    }
                ),
                "usages": {
                    "type": "array",
                    "items": {
                        "enum": [
                            "server auth",
                            "client auth",
                            "digital signature",
                            "key encipherment",
                            "cert sign",
                        ]
                    },
                },
                "issuerRef": _ISSUER_REF,
            },
            required=("secretName", "issuerRef"),
        ),
    },
    required=("apiVersion", "kind", "metadata", "spec"),
)

INFERENCE_SERVICE = _object(
    {
        "apiVersion": {"const": "serving.kserve.io/v1beta1"},
        "kind": {"const": "InferenceService"},
        "metadata": _METADATA,
        "spec": _object(
            {
                "predictor": _object(
                    {
                        "model": _object(
                            {
                                "modelFormat": _object(
                                    {"name": _STR, "version": _STR}, required=("name",)
                                ),
                                "storageUri": _STR,
                                "runtime": _STR,
                            },
                            required=("modelFormat",),
                        ),
                        "annotations": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        },
                    }
                )
            },
            required=("predictor",),
        ),
    },
    required=("apiVersion", "kind", "metadata", "spec"),
)

SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("cert-manager.io/v1", "Issuer"): ISSUER,
    ("cert-manager.io/v1", "Certificate"): CERTIFICATE,
    ("serving.kserve.io/v1beta1", "InferenceService"): INFERENCE_SERVICE,
}
