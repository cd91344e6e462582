"""``POST /api/v1/devices/{device_id}/certificate``: a device renews its certificate (mTLS)."""

from __future__ import annotations

from aiohttp import web

from edge_server.api.http import json_response, read_model
from edge_server.auth import current_device, device
from edge_server.keys import CA, SETTINGS, STORE
from edge_server.ops.certificates import renew_device_certificate
from registration import identity
from registration.protocol import CertificateRenewRequest, CertificateRenewResponse

routes = web.RouteTableDef()


@routes.post("/api/v1/devices/{device_id}/certificate")
@device
async def renew_certificate(request: web.Request) -> web.Response:
    me = current_device(request)
    doc = await read_model(request, CertificateRenewRequest)
    ca = request.app[CA]
    renewed = await renew_device_certificate(
        request.app[STORE],
        ca,
        me.device_id,
        me.serial,
        doc.csr,
        request.app[SETTINGS].device_cert_lifetime,
    )
    cert = renewed.certificate
    return json_response(
        CertificateRenewResponse(
            certificate=identity.cert_to_pem(cert).decode(),
            ca=ca.pem,
            serial=str(renewed.serial),
            not_before=cert.not_valid_before_utc.timestamp(),
            not_after=cert.not_valid_after_utc.timestamp(),
        )
    )
