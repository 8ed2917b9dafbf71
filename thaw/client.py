"""Client side of the HTTP API: `ThawClient` and `AsyncThawClient`, typed clients of a running Thaw service over
httpx (the CLI and the demo use them), and `wait_job` for a plain httpx client.

Each endpoint is written once (`_Endpoints`) as the request it makes; the sync client sends it and returns the
decoded body, the async client returns an awaitable of the same. Results are plain JSON typed as TypedDicts. A 4xx
or 5xx answer raises `ThawAPIError` with the status and the server's reason; a service that cannot be reached raises
httpx's `TransportError`.

    with ThawClient("http://127.0.0.1:8000", api_key="...") as thaw:
        job = thaw.wait_job(thaw.upload_item("song-1", {"title": "Whale song"}, audio=Path("song.ogg"))["job_id"])
        recs = thaw.recommendations("u1", k=10, exclude=["song-0"], explain=True)
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, Generic, Literal, NotRequired, ParamSpec, TypedDict, TypeVar, overload
from urllib.parse import quote

import httpx

FINISHED = ("succeeded", "failed")
P = ParamSpec("P")
T = TypeVar("T")
Filter = Mapping[str, str | int | bool]
Media = bytes | Path


class ThawAPIError(Exception):
    """The service answered 4xx or 5xx: `status_code`, and `reason`, the server's `detail` (validation issues joined
    into one line)."""

    def __init__(self, status_code: int, reason: str, method: str, path: str) -> None:
        super().__init__(f"{method} {path} -> {status_code}: {reason}")
        self.status_code, self.reason, self.method, self.path = status_code, reason, method, path


class Accepted(TypedDict):
    item_id: str
    job_id: str


class BatchAccepted(TypedDict):
    job_id: str
    total: int
    failed: int


class Job(TypedDict):
    job_id: str
    kind: str
    status: str
    error: str | None
    item_id: str | None
    attempts: int
    batch_id: str | None
    model_version: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    progress: dict[str, Any] | None


class JobPage(TypedDict):
    jobs: list[Job]
    next_cursor: str | None


class Item(TypedDict):
    item_id: str
    metadata: dict[str, Any]
    modalities: list[str]
    indexed: bool
    model_version: str | None
    interactions: int
    created_at: str | None
    job: dict[str, Any] | None


class ItemSummary(TypedDict):
    item_id: str
    metadata: dict[str, Any]
    modalities: list[str]
    revision: int
    indexed: bool
    created_at: str
    updated_at: str


class ItemPage(TypedDict):
    items: list[ItemSummary]
    next_cursor: str | None


class Scored(TypedDict):
    item_id: str
    score: float


class Similar(TypedDict):
    item_id: str
    using: str
    items: list[Scored]


class Explanation(TypedDict):
    source: str
    items: list[str]
    similarity: list[float]


class Recommended(TypedDict):
    item_id: str
    score: float
    cold: bool | None
    team: str | None
    because: NotRequired[Explanation | None]


class Recommendations(TypedDict):
    rec_id: str
    user_id: str
    alpha: float | None
    model_version: str
    items: list[Recommended]
    experiment_id: str | None
    arm: str | None
    fallback: str | None


class Event(TypedDict):
    user_id: str
    item_id: str
    weight: NotRequired[float]
    type: NotRequired[str]
    rec_id: NotRequired[str | None]
    timestamp: NotRequired[str | float]


class EventsAccepted(TypedDict):
    accepted: int
    joined: int


class PastEvent(TypedDict):
    item_id: str
    weight: float
    type: str
    rec_id: str | None
    timestamp: str


class History(TypedDict):
    user_id: str
    events: list[PastEvent]
    next_cursor: str | None


class ReembedAccepted(TypedDict):
    job_id: str
    model_version: str
    total: int
    chunks: int


class Resumed(TypedDict):
    job_id: str
    chunks: int


class ModelVersion(TypedDict):
    version: str
    dim: int | None
    embedding_dims: dict[str, int]
    indexed: bool
    items: int | None
    served: bool
    trained_at: str | None
    alpha: float | None
    data: dict[str, int | None]
    validation: dict[str, float]


class ModelVersions(TypedDict):
    served: str | None
    running_job: str | None
    versions: list[ModelVersion]


class Activated(TypedDict):
    served: str
    previous: str | None
    catch_up_job: str | None


class Arm(TypedDict):
    name: str
    policy: str
    share: NotRequired[float]
    alpha: NotRequired[float]
    model_version: NotRequired[str]


class Experiment(TypedDict):
    experiment_id: str
    name: str
    kind: str
    control: str
    salt: str
    arms: list[dict[str, Any]]
    start_at: str
    end_at: str | None
    created_at: str
    status: str


class Health(TypedDict):
    status: str
    model_version: str | None


@dataclass
class Req(Generic[T]):
    """One request of an endpoint: its path arguments (quoted into the route), query, body and how to read the
    answer (`json`, `bytes` or `text`; a 204 reads as None). `T` is the type of the decoded answer."""

    path: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] | None = None
    json: Any = None
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes]] | None = None
    read: Literal["json", "bytes", "text"] = "json"


class Endpoint(Generic[P, T]):
    """A client method defined once: `build` turns the arguments into a `Req` for `method` `route`; on a
    `ThawClient` it returns the answer, on an `AsyncThawClient` an awaitable of it."""

    def __init__(self, method: str, route: str, build: Callable[Concatenate[Any, P], Req[T]]) -> None:
        self.method, self.route, self.build = method, route, build
        self.__doc__ = build.__doc__

    @overload
    def __get__(self, client: None, owner: type) -> Endpoint[P, T]: ...
    @overload
    def __get__(self, client: ThawClient, owner: type) -> Callable[P, T]: ...
    @overload
    def __get__(self, client: AsyncThawClient, owner: type) -> Callable[P, Awaitable[T]]: ...
    def __get__(self, client: Any, owner: type) -> Any:
        if client is None:
            return self

        @functools.wraps(self.build)
        def call(*args: P.args, **kwargs: P.kwargs) -> Any:
            req = self.build(client, *args, **kwargs)
            path = self.route.format(**{k: quote(v, safe="") for k, v in req.path.items()})
            return client._send(self.method, path, req)

        return call


def endpoint(method: str, route: str) -> Callable[[Callable[Concatenate[Any, P], Req[T]]], Endpoint[P, T]]:
    return lambda build: Endpoint(method, route, build)


def _media(value: Media) -> tuple[str, bytes]:
    return (value.name, value.read_bytes()) if isinstance(value, Path) else ("upload", value)


def _query(**params: Any) -> dict[str, Any]:
    """Query parameters without the ones left out (None); a filter mapping goes as JSON."""
    return {k: json.dumps(dict(v)) if isinstance(v, Mapping) else v for k, v in params.items() if v is not None}


class _Endpoints:
    """Every public endpoint of the API, as the request it makes (tests/unit/test_client.py checks that each route
    of the OpenAPI has one)."""

    @endpoint("POST", "/items")
    def upload_item(
        self,
        item_id: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        image: Media | None = None,
        audio: Media | None = None,
    ) -> Req[Accepted]:
        """Upload (or replace) an item with its metadata and media (bytes or a file path); a worker embeds it."""
        files = {f: _media(v) for f, v in (("image", image), ("audio", audio)) if v is not None}
        return Req(data={"item_id": item_id, "metadata": json.dumps(dict(metadata or {}))}, files=files or None)

    @endpoint("POST", "/items:batch")
    def upload_batch(
        self, items: Sequence[Mapping[str, Any]], media: Mapping[str, Media] | None = None
    ) -> Req[BatchAccepted]:
        """Upload (or replace) many items in one request: `items` are objects with `item_id` and text fields; `media`
        maps `image:<item_id>` / `audio:<item_id>` to bytes or a file path. One job embeds the batch; GET
        /jobs/{job_id} lists each item's status."""
        ndjson = "".join(json.dumps(dict(item)) + "\n" for item in items).encode("utf-8")
        files = {"metadata": ("metadata.ndjson", ndjson), **{k: _media(v) for k, v in (media or {}).items()}}
        return Req(files=files)

    @endpoint("PATCH", "/items/{item_id}")
    def patch_item(self, item_id: str, metadata: Mapping[str, Any]) -> Req[Accepted]:
        """Change metadata fields (None removes one) and re-embed the item with its kept media."""
        return Req({"item_id": item_id}, json={"metadata": dict(metadata)})

    @endpoint("GET", "/items/{item_id}")
    def get_item(self, item_id: str) -> Req[Item]:
        return Req({"item_id": item_id})

    @endpoint("GET", "/items")
    def list_items(
        self,
        *,
        cursor: str | None = None,
        limit: int | None = None,
        modality: str | None = None,
        filter: Filter | None = None,
    ) -> Req[ItemPage]:
        """One page of the catalogue in item-id order; pass `next_cursor` back as `cursor`."""
        return Req(params=_query(cursor=cursor, limit=limit, modality=modality, filter=filter))

    @endpoint("DELETE", "/items/{item_id}")
    def delete_item(self, item_id: str) -> Req[None]:
        """Delete an item from every model version, the media store and the database (404 when nothing is left)."""
        return Req({"item_id": item_id})

    @endpoint("GET", "/items/{item_id}/similar")
    def similar(
        self, item_id: str, *, k: int = 10, using: str = "content", filter: Filter | None = None
    ) -> Req[Similar]:
        return Req({"item_id": item_id}, params=_query(k=k, using=using, filter=filter))

    @endpoint("GET", "/users/{user_id}/recommendations")
    def recommendations(
        self,
        user_id: str,
        *,
        k: int = 10,
        alpha: float | None = None,
        cold_only: bool = False,
        experiment: str | None = None,
        offset: int = 0,
        filter: Filter | None = None,
        exclude: Sequence[str] = (),
        explain: bool = False,
    ) -> Req[Recommendations]:
        """The user's recommendations; `exclude` leaves items out, `explain` says why each item is there."""
        flags = {"cold_only": cold_only or None, "explain": explain or None, "exclude": list(exclude) or None}
        params = _query(k=k, alpha=alpha, experiment=experiment, offset=offset or None, filter=filter, **flags)
        return Req({"user_id": user_id}, params=params)

    @endpoint("POST", "/events")
    def send_events(self, events: Event | Sequence[Event]) -> Req[EventsAccepted]:
        return Req(json=events if isinstance(events, Mapping) else list(events))

    @endpoint("GET", "/users/{user_id}/history")
    def user_history(self, user_id: str, *, cursor: str | None = None, limit: int | None = None) -> Req[History]:
        return Req({"user_id": user_id}, params=_query(cursor=cursor, limit=limit))

    @endpoint("DELETE", "/users/{user_id}")
    def erase_user(self, user_id: str) -> Req[None]:
        """Erase the user's events, exposures and vectors (404 when nothing is left)."""
        return Req({"user_id": user_id})

    @endpoint("GET", "/jobs/{job_id}")
    def get_job(self, job_id: str) -> Req[Job]:
        return Req({"job_id": job_id})

    @endpoint("GET", "/jobs")
    def list_jobs(
        self,
        *,
        cursor: str | None = None,
        limit: int | None = None,
        status: str | None = None,
        kind: str | None = None,
    ) -> Req[JobPage]:
        return Req(params=_query(cursor=cursor, limit=limit, status=status, kind=kind))

    @endpoint("POST", "/jobs/reembed")
    def reembed(
        self,
        model_version: str,
        *,
        filter: Filter | None = None,
        chunk_size: int | None = None,
        max_failed_share: float | None = None,
    ) -> Req[ReembedAccepted]:
        """Re-embed the catalogue (or the items matching `filter`) with a version; it is served when done."""
        body = {"model_version": model_version, "filter": None if filter is None else dict(filter)}
        return Req(json={**body, "chunk_size": chunk_size, "max_failed_share": max_failed_share})

    @endpoint("POST", "/jobs/{job_id}/resume")
    def resume_job(self, job_id: str) -> Req[Resumed]:
        return Req({"job_id": job_id})

    @endpoint("GET", "/models")
    def list_models(self) -> Req[ModelVersions]:
        return Req()

    @endpoint("POST", "/models/{version}/activate")
    def activate_model(self, version: str) -> Req[Activated]:
        return Req({"version": version})

    @endpoint("POST", "/experiments")
    def create_experiment(
        self,
        name: str,
        arms: Sequence[Arm],
        control: str,
        *,
        kind: str = "ab",
        salt: str | None = None,
        start_at: str | None = None,
        end_at: str | None = None,
    ) -> Req[Experiment]:
        body = {"name": name, "arms": list(arms), "control": control, "kind": kind}
        return Req(json={**body, **_query(salt=salt, start_at=start_at, end_at=end_at)})

    @endpoint("GET", "/experiments")
    def list_experiments(self) -> Req[list[Experiment]]:
        return Req()

    @endpoint("GET", "/experiments/{experiment_id}")
    def get_experiment(self, experiment_id: str) -> Req[Experiment]:
        return Req({"experiment_id": experiment_id})

    @endpoint("POST", "/experiments/{experiment_id}/stop")
    def stop_experiment(self, experiment_id: str) -> Req[Experiment]:
        return Req({"experiment_id": experiment_id})

    @endpoint("GET", "/experiments/{experiment_id}/report")
    def experiment_report(self, experiment_id: str) -> Req[dict[str, Any]]:
        return Req({"experiment_id": experiment_id})

    @endpoint("GET", "/experiments/{experiment_id}/report.png")
    def experiment_chart(self, experiment_id: str) -> Req[bytes]:
        return Req({"experiment_id": experiment_id}, read="bytes")

    @endpoint("GET", "/health")
    def health(self) -> Req[Health]:
        return Req()

    @endpoint("GET", "/metrics")
    def metrics(self) -> Req[str]:
        """The Prometheus exposition text."""
        return Req(read="text")


def _headers(api_key: str | None) -> dict[str, str]:
    return {"X-API-Key": api_key} if api_key else {}


def _answer(resp: httpx.Response, method: str, path: str, read: str) -> Any:
    """The decoded answer; ThawAPIError with the server's reason for a 4xx or 5xx."""
    if resp.status_code >= 400:
        try:
            detail = resp.json().get("detail", resp.text)
        except (ValueError, AttributeError):
            detail = resp.text
        if isinstance(detail, list):  # validation issues
            detail = "; ".join(f"{'.'.join(map(str, d.get('loc', ())))}: {d.get('msg')}" for d in detail)
        raise ThawAPIError(resp.status_code, str(detail), method, path)
    if resp.status_code == 204:
        return None
    return resp.content if read == "bytes" else resp.text if read == "text" else resp.json()


def _send_kwargs(req: Req[Any]) -> dict[str, Any]:
    return {"params": req.params, "json": req.json, "data": req.data, "files": req.files}


class ThawClient(_Endpoints):
    """A synchronous client of a running Thaw service; `api_key` is sent as X-API-Key. Use it as a context manager
    (or call close()); `transport` and other httpx.Client options pass through."""

    def __init__(self, url: str = "http://127.0.0.1:8000", *, api_key: str | None = None, **httpx_options: Any) -> None:
        self.http = httpx.Client(base_url=url, headers=_headers(api_key), **{"timeout": 60.0, **httpx_options})

    def _send(self, method: str, path: str, req: Req[Any]) -> Any:
        return _answer(self.http.request(method, path, **_send_kwargs(req)), method, path, req.read)

    def wait_job(self, job_id: str, timeout: float = 120.0, poll_s: float = 0.05) -> Job:
        """Poll the job until it has succeeded or failed; TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (job := self.get_job(job_id))["status"] not in FINISHED:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not finish in {timeout}s")
            time.sleep(poll_s)
        return job

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ThawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncThawClient(_Endpoints):
    """The asynchronous twin of `ThawClient`: the same methods, awaited."""

    def __init__(self, url: str = "http://127.0.0.1:8000", *, api_key: str | None = None, **httpx_options: Any) -> None:
        self.http = httpx.AsyncClient(base_url=url, headers=_headers(api_key), **{"timeout": 60.0, **httpx_options})

    async def _send(self, method: str, path: str, req: Req[Any]) -> Any:
        return _answer(await self.http.request(method, path, **_send_kwargs(req)), method, path, req.read)

    async def wait_job(self, job_id: str, timeout: float = 120.0, poll_s: float = 0.05) -> Job:
        """Poll the job until it has succeeded or failed; TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (job := await self.get_job(job_id))["status"] not in FINISHED:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not finish in {timeout}s")
            await asyncio.sleep(poll_s)
        return job

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncThawClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def wait_job(client: httpx.Client, job_id: str, timeout: float = 120.0, poll_s: float = 0.01) -> dict[str, Any]:
    """Poll GET /jobs/{job_id} on a plain httpx client until the job has succeeded or failed; TimeoutError after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if job["status"] in FINISHED:
            return job
        time.sleep(poll_s)
    raise TimeoutError(f"job {job_id} did not finish in {timeout}s")
