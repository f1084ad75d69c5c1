"""GET /schema: the docs UI works without internet access, every file it loads served by the API."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urlsplit

import httpx

# What each kind of asset must be served as, and a floor well below the real files' sizes
# (the Swagger UI bundle is over a megabyte; an empty or error answer is a few hundred bytes).
EXPECTED = {
    "script": (("text/javascript", "application/javascript"), 10_000),
    "stylesheet": (("text/css",), 10_000),
    "icon": (("image/png",), 100),
}


class AssetLinks(HTMLParser):
    """Every <script src> and <link href> of a page, and any other src/href attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.assets: list[tuple[str, str]] = []  # (kind, url)
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.urls += [value for name, value in attrs if name in {"src", "href"} and value]
        if tag == "script" and values.get("src"):
            self.assets.append(("script", str(values["src"])))
        elif tag == "link" and values.get("href"):
            self.assets.append((str(values.get("rel") or "link"), str(values["href"])))


def docs_page(client: httpx.Client) -> tuple[str, AssetLinks]:
    response = client.get("/schema")
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]
    links = AssetLinks()
    links.feed(response.text)
    return response.text, links


def test_the_docs_page_loads_nothing_from_elsewhere(client: httpx.Client) -> None:
    page, links = docs_page(client)
    assert {kind for kind, _ in links.assets} >= {"script", "stylesheet", "icon"}
    for url in links.urls:
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc) == ("", ""), f"{url} is not on this origin"
        assert url.startswith("/"), url
        assert "cdn" not in url.lower()
    assert "http://" not in page
    assert "https://" not in page


def test_every_file_the_docs_page_loads_is_served(client: httpx.Client) -> None:
    for kind, url in docs_page(client)[1].assets:
        response = client.get(url)
        assert response.status_code == 200, url
        media_types, least = EXPECTED[kind]
        assert response.headers["content-type"].split(";")[0] in media_types, url
        assert len(response.content) >= least, url


def test_the_docs_page_is_swagger_ui_over_this_apis_document(client: httpx.Client) -> None:
    page, _ = docs_page(client)
    assert "SwaggerUIBundle(" in page
    assert '"/jumps"' in page  # the OpenAPI document is inlined into the page
    assert client.get("/schema/openapi.json").status_code == 200
