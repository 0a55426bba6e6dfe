"""``/api/v1/repos``: register, list, show, remove forge repositories, rotate a web-hook secret.

Admin only: a trusted token (``:trusted`` in SANDPIT_API_TOKENS), since a repository decides
which pushes become trusted runs. Secrets and tokens are sealed before they are stored and no
answer carries them.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Response

from api.deps import CallerDep, EngineDep, SettingsDep
from api.errors import Forbidden
from api.settings import ApiToken
from api.webhooks import sealer_for
from api.webhooks_schemas import DeliveryPublic, RepoCreate, RepoDetail, RepoPublic, SecretRotate
from pipelines.store import repos as store
from pipelines.store.db import read_scope, session_scope
from pipelines.store.models import Repository

router = APIRouter(prefix="/repos", tags=["repos"])


async def admin(caller: CallerDep) -> ApiToken:
    if not caller.trusted:
        raise Forbidden(f"token `{caller.name}` may not manage repositories (only a token configured with "
                        "`:trusted` in SANDPIT_API_TOKENS may)")
    return caller


AdminDep = Annotated[ApiToken, Depends(admin)]


def repo_public(repo: Repository) -> RepoPublic:
    return RepoPublic(id=repo.id, name=repo.name, forge=repo.forge, clone_url=repo.clone_url,
                      pipeline_path=repo.pipeline_path, default_branch=repo.default_branch,
                      fork_policy=repo.fork_policy, has_token=repo.token_sealed is not None, api_url=repo.api_url,
                      created_at=repo.created_at, secret_rotated_at=repo.secret_rotated_at,
                      webhook_path=f"/api/v1/webhooks/{repo.forge}/{repo.id}")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@router.post("", status_code=201, response_model=RepoPublic,
             responses={403: {"description": "not a trusted token"}, 409: {"description": "the name is taken"}})
def add_repo(wanted: RepoCreate, _admin: AdminDep, settings: SettingsDep, engine: EngineDep) -> RepoPublic:
    sealer = sealer_for(settings)
    new = store.NewRepository(
        name=wanted.name, forge=wanted.forge, clone_url=wanted.clone_url, secret_sealed=sealer.seal(wanted.secret),
        token_sealed=sealer.seal(wanted.token) if wanted.token else None, pipeline_path=wanted.pipeline_path,
        default_branch=wanted.default_branch, fork_policy=wanted.fork_policy, api_url=wanted.api_url)
    with session_scope(engine) as session:
        return repo_public(store.add_repository(session, new, _now()))


@router.get("", response_model=list[RepoPublic])
def list_repos(_admin: AdminDep, engine: EngineDep) -> list[RepoPublic]:
    with read_scope(engine) as session:
        return [repo_public(r) for r in store.list_repositories(session)]


@router.get("/{ref:path}/deliveries", response_model=list[DeliveryPublic])
def list_deliveries(ref: str, _admin: AdminDep, engine: EngineDep, limit: int = 20) -> list[DeliveryPublic]:
    with read_scope(engine) as session:
        repo = store.get_repository(session, ref)
        return [DeliveryPublic.model_validate(d, from_attributes=True)
                for d in store.list_deliveries(session, repo.id, max(1, min(limit, 500)))]


@router.post("/{ref:path}/rotate-secret", response_model=RepoPublic)
def rotate_secret(ref: str, wanted: SecretRotate, _admin: AdminDep, settings: SettingsDep,
                  engine: EngineDep) -> RepoPublic:
    sealed = sealer_for(settings).seal(wanted.secret)
    with session_scope(engine) as session:
        return repo_public(store.set_repository_secret(session, ref, sealed, _now()))


@router.get("/{ref:path}", response_model=RepoDetail)
def show_repo(ref: str, _admin: AdminDep, engine: EngineDep) -> RepoDetail:
    with read_scope(engine) as session:
        repo = store.get_repository(session, ref)
        deliveries = [DeliveryPublic.model_validate(d, from_attributes=True)
                      for d in store.list_deliveries(session, repo.id)]
        return RepoDetail(**repo_public(repo).model_dump(), deliveries=deliveries)


@router.delete("/{ref:path}", status_code=204)
def remove_repo(ref: str, _admin: AdminDep, engine: EngineDep) -> Response:
    with session_scope(engine) as session:
        store.remove_repository(session, ref)
    return Response(status_code=204)
