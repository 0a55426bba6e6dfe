"""The shapes of ``/api/v1/repos`` (pydantic, at the border). No response shape has a field for
a repository's secret or token: the API takes them and never gives them back."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Forge = Literal["github", "gitlab", "gitea"]
ForkPolicy = Literal["run", "approve", "never"]


class RepoCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$",
                      description="what the CLI and logs call it, e.g. `owner/project`")
    forge: Forge = Field(description="github, gitlab or gitea (Forgejo is gitea)")
    clone_url: str = Field(min_length=1, max_length=2000, pattern=r"^(https?|git)://[^\s]+$",
                           description="git://, http:// or https:// (other transports are refused)")
    secret: str = Field(min_length=16, max_length=512, description="the web-hook secret; never returned")
    token: str | None = Field(default=None, max_length=4096, description="forge API token for statuses; never "
                              "returned")
    pipeline_path: str = Field(default=".gitlab-ci.yml", max_length=255, pattern=r"^[A-Za-z0-9._/-]+$")
    default_branch: str = Field(default="main", min_length=1, max_length=255, pattern=r"^[^\s\x00-\x1f]+$")
    fork_policy: ForkPolicy = "approve"
    api_url: str | None = Field(default=None, max_length=2000, pattern=r"^https?://[^\s]+$",
                                description="the forge's REST API for commit statuses (e.g. "
                                "`https://lab.example/api/v4`); default: derived from the clone URL")


class SecretRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    secret: str = Field(min_length=16, max_length=512)


class DeliveryPublic(BaseModel):
    delivery_id: str | None
    event: str
    verdict: str
    status_code: int
    message: str
    run_id: str | None
    received_at: dt.datetime


class RepoPublic(BaseModel):
    id: str
    name: str
    forge: str
    clone_url: str
    pipeline_path: str
    default_branch: str
    fork_policy: str
    has_token: bool
    api_url: str | None = Field(default=None, description="where statuses go; None: derived from the clone URL")
    created_at: dt.datetime
    secret_rotated_at: dt.datetime | None
    webhook_path: str = Field(description="where the forge sends this repository's web-hooks")


class RepoDetail(RepoPublic):
    deliveries: list[DeliveryPublic] = Field(default_factory=list, description="the latest, newest first")
