"""``/api/v1/webhooks/{forge}/{repo_id}``: one URL per repository (see docs/forges.md).

No bearer token: a delivery is authenticated by its signature, checked with the repository's
secret (known from the URL) over the exact bytes received, before the body is parsed. The
repository is looked up before the body is read, and the body is read with a byte cap, so an
unknown repository or an oversized body costs no more than its headers and the cap.
"""

from __future__ import annotations

from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api import webhooks
from api.deps import EngineDep, PublisherDep, SettingsDep
from api.errors import BodyTooLarge
from api.intake import read_capped_body
from pipelines.forges.events import event_name

router = APIRouter(prefix="/webhooks", tags=["webhooks"])
FORGES = ("github", "gitlab", "gitea")

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "`pong` (ping) or `cancelled` (a closed pull/merge request's runs)"},
    201: {"description": "`created`: a run was created (`run_id`)"},
    202: {"description": "`needs_approval`: a fork's run stored held (`run_id`) until an admin approves it; "
          "accepted, nothing created: `ignored_event`, `ref_deleted`, `skip_ci`, `fork_refused`, "
          "`no_pipeline_created`"},
    401: {"description": "`bad_signature`, `missing_signature`, `stale_timestamp`"},
    404: {"description": "`unknown_repository`, `unknown_forge`, `wrong_forge`"},
    413: {"description": "`too_large`: the body is over SANDPIT_API_MAX_BODY"},
    422: {"description": "`wrong_repository`, `no_pipeline_file`, `invalid_pipeline`, `over_policy` (the last "
          "three also put a failed status on the commit)"},
    502: {"description": "`fetch_failed`: the commit could not be fetched (a redelivery is acted on afresh)"},
}


@router.post("/{forge}/{repo_id}", responses=_RESPONSES)
async def receive(forge: str, repo_id: str, request: Request, settings: SettingsDep, engine: EngineDep,
                  publisher: PublisherDep) -> JSONResponse:
    if forge not in FORGES:
        refused = webhooks.WebhookAnswer(404, "unknown_forge", f"unknown forge {forge[:40]!r}; web-hooks are received "
                                         f"at /api/v1/webhooks/{{{','.join(FORGES)}}}/<repository id>")
        return JSONResponse(refused.body(), status_code=404)
    repo = await to_thread.run_sync(webhooks.load_repository, engine, webhooks.sealer_for(settings), repo_id)
    headers = {name.lower(): value for name, value in request.headers.items()}
    try:
        body = await read_capped_body(request, settings.max_body_bytes)
    except BodyTooLarge as exc:
        answer = webhooks.WebhookAnswer(413, "too_large", exc.message)
        event = event_name(forge, headers)
        answer = await to_thread.run_sync(webhooks.record_refusal, engine, repo, event, answer)
    else:
        reader = getattr(request.app.state, "pipeline_reader", None) or webhooks.mirror_reader(engine, settings)
        answer = await to_thread.run_sync(webhooks.receive_delivery, engine, publisher, settings, repo, forge,
                                          headers, body, reader)
    sender = getattr(request.app.state, "status_sender", None)
    if sender is not None and not answer.replay:
        sender.wake()  # a run to report, or a failed pipeline file to put on the commit
    extra = {"X-Sandpit-Replay": "1"} if answer.replay else None
    return JSONResponse(answer.body(), status_code=answer.status_code, headers=extra)
