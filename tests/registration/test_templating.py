from __future__ import annotations

import pytest
import yaml

from registration import templating
from registration.errors import TemplateError
from registration.protocol import Cpu, Facts, Nic

FACTS = Facts(
    hostname="Host Name!",
    dmi={"product_uuid": "4C4C4544-0042-3510-8052-B4C04F384D32", "sys_vendor": "Dell Inc."},
    cpu=Cpu(model="Intel(R) Xeon(R)", count=8),
    nics=[Nic(name="eth0", mac="52:54:00:12:34:56")],
)
VALUES = templating.context(FACTS, {"site": "eu"})


def test_prefix_of_dmi_uuid() -> None:
    assert templating.render("edge-${dmi.product_uuid:8}", VALUES) == "edge-4C4C4544"


def test_values_are_sanitised_to_safe_characters() -> None:
    assert templating.render("${dmi.sys_vendor}", VALUES) == "Dell-Inc"
    assert templating.render("${hostname}", VALUES) == "Host-Name"


def test_rendered_values_are_at_most_63_chars() -> None:
    long = templating.context(Facts(hostname="a" * 200), {})
    assert len(templating.render("${hostname}", long)) == 63


def test_mac_and_labels_are_available() -> None:
    assert templating.render("gw-${net.mac}-${label.site}", VALUES) == "gw-525400123456-eu"


def test_malformed_placeholder_is_refused() -> None:
    with pytest.raises(TemplateError):
        templating.render("edge-${dmi.product_uuid", VALUES)


def test_name_falls_back_when_every_fact_is_missing() -> None:
    empty = templating.context(Facts(), {})
    assert templating.render_name("edge-${dmi.product_uuid:8}", empty, "a1b2c3") == "edge-a1b2c3"
    assert templating.render_name("edge-${dmi.product_uuid:8}", VALUES, "x") == "edge-4C4C4544"


def test_label_that_renders_empty_is_dropped() -> None:
    empty = templating.context(Facts(), {})
    labels = templating.render_labels({"serial": "${dmi.board_serial}", "tier": "prod"}, empty)
    assert labels == {"tier": "prod"}


BUNDLE = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: site-${labels.site}
  labels: {device: ${device.id:12}}
data:
  node: ${device.name}
  script: echo ${HOME} ${labels.missing}
"""


def test_a_bundle_is_rendered_for_its_device_and_other_placeholders_are_left_alone() -> None:
    values = templating.document_values("dev-0123456789abcdef", "edge-1", {"site": "eu"})
    rendered = templating.render_document(BUNDLE, values)
    assert "name: site-eu\n" in rendered
    assert "labels: {device: dev-01234567}" in rendered
    assert "node: edge-1\n" in rendered
    assert "script: echo ${HOME} \n" in rendered  # not ours; a missing label is empty


def test_hostile_label_values_cannot_change_the_yaml_structure() -> None:
    hostile = 'eu"\n  evil: true\nkind: Secret # x: {y}'
    values = templating.document_values("dev-1", "edge-1", {"site": hostile})
    document = yaml.safe_load(templating.render_document(BUNDLE, values))
    assert document["kind"] == "ConfigMap"
    assert set(document["metadata"]) == {"name", "labels"}
    assert document["metadata"]["name"] == "site-eu-evil-true-kind-Secret-x-y"
