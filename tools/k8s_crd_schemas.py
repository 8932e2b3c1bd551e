"""Export JSON Schemas of the KEDA and prometheus-operator custom resources from the pydantic models
that cloudcoil generates from those operators' CRDs (cloudcoil-models-keda, -prometheus-operator).

Run in a throwaway venv (the pipeline does not depend on cloudcoil):
    python -m venv /tmp/crdvenv
    /tmp/crdvenv/bin/pip install cloudcoil-models-keda==2.16.1.0 \
        cloudcoil-models-prometheus-operator==0.80.1.0
    /tmp/crdvenv/bin/python tools/k8s_crd_schemas.py
Writes k8s/schemas/<group>_<version>_<kind>.<operator>-<version>.json. Structural CRD schemas prune
unknown fields (kubectl's strict field validation rejects them), so every object that lists its
properties gets ``additionalProperties: false`` unless the model allows extra keys.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "k8s" / "schemas"
MODELS = [  # (module, class, distribution, operator tag)
    ("cloudcoil.models.keda.v1alpha1", "ScaledObject", "cloudcoil.models.keda", "keda"),
    ("cloudcoil.models.keda.v1alpha1", "TriggerAuthentication", "cloudcoil.models.keda", "keda"),
    ("cloudcoil.models.prometheus_operator.v1", "PodMonitor", "cloudcoil.models.prometheus_operator",
     "prometheus-operator"),
    ("cloudcoil.models.prometheus_operator.v1", "PrometheusRule", "cloudcoil.models.prometheus_operator",
     "prometheus-operator"),
]


def strict(node: object) -> None:
    """Close every object schema that enumerates its properties; make Go (RE2) patterns Python's."""
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        if isinstance(node.get("pattern"), str) and node["pattern"].startswith("^(?i)"):
            node["pattern"] = "(?i)^" + node["pattern"][5:]  # RE2 allows flags after ^, Python does not
        for value in node.values():
            strict(value)
    elif isinstance(node, list):
        for value in node:
            strict(value)


def export(module: str, cls: str, dist: str, tag: str) -> Path:
    model = getattr(__import__(module, fromlist=[cls]), cls)
    schema = model.model_json_schema(by_alias=True, mode="validation")
    strict(schema)
    props = schema["properties"]
    api_version = props["apiVersion"].get("default")
    props["apiVersion"] = {"const": api_version}
    props["kind"] = {"const": cls}
    props.pop("status", None)
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    version = metadata.version(dist).rsplit(".", 1)[0]  # 2.16.1.0 -> operator 2.16.1
    schema["$comment"] = f"Derived from the {tag} {version} CRD via {dist} {metadata.version(dist)}."
    group, ver = api_version.split("/")
    path = OUT / f"{group}_{ver}_{cls.lower()}.{tag}-{version}.json"
    path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    return path


if __name__ == "__main__":
    for spec in MODELS:
        print(export(*spec))
