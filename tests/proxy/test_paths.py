"""canonical_path: every spelling of a path maps to one, or is refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config import BadRequest
from proxy.paths import canonical_path

V1 = frozenset({"/v1"})
BOTH = frozenset({"/v1", "/api"})
REFUSED = None

SPELLINGS: list[tuple[bytes, frozenset[str], str | None]] = [
    (b"/v1/chat/completions", V1, "/v1/chat/completions"),
    (b"/v1/./chat/completions", V1, "/v1/chat/completions"),
    (b"/v1/chat/./completions", V1, "/v1/chat/completions"),
    (b"/v1/%63hat/completions", V1, "/v1/chat/completions"),
    (b"/v1/%43hat/completions", V1, "/v1/Chat/completions"),
    (b"/%76%31/chat/completions", V1, "/v1/chat/completions"),
    (b"/v1/x/../chat/completions", V1, "/v1/chat/completions"),
    (b"/v1/%2e/chat/completions", V1, "/v1/chat/completions"),
    (b"/v1/x/%2e%2E/chat/completions", V1, "/v1/chat/completions"),
    (b"/v1/x/.%2e/chat/completions", V1, "/v1/chat/completions"),
    (b"/v1//chat//completions", V1, "/v1/chat/completions"),
    (b"//v1/chat/completions", V1, "/v1/chat/completions"),
    (b"/v1/chat/completions/", V1, "/v1/chat/completions"),
    (b"/v1/chat/completions/.", V1, "/v1/chat/completions"),
    (b"/v1", V1, "/v1"),
    (b"/v1/", V1, "/v1"),
    (b"/v1/models/a/..", V1, "/v1/models"),
    (b"/v1/%7Euser", V1, "/v1/~user"),
    (b"/v1/%7euser", V1, "/v1/~user"),
    (b"/v1/chat%2ecompletions", V1, "/v1/chat.completions"),
    (b"/v1/models/caf%c3%a9", V1, "/v1/models/caf%C3%A9"),
    (b"/v1/a%3ab", V1, "/v1/a%3Ab"),
    (b"/v1/100%25", V1, "/v1/100%25"),
    (b"/v1/models/org:model@v2", V1, "/v1/models/org:model@v2"),
    (b"/v1/../v1/embeddings", V1, "/v1/embeddings"),
    (b"/api/../v1/chat/completions", V1, "/v1/chat/completions"),
    (b"/api/../v1/chat/completions", BOTH, "/v1/chat/completions"),
    (b"/api/chat", BOTH, "/api/chat"),
    (b"/api/./generate/", BOTH, "/api/generate"),
    # leaves its mount
    (b"/v1/..", V1, REFUSED),
    (b"/v1/%2e%2e/anything", V1, REFUSED),
    (b"/v1/%2E%2E/%2E%2E/etc/passwd", V1, REFUSED),
    (b"/v1/../../etc/passwd", V1, REFUSED),
    (b"/api/chat", V1, REFUSED),
    (b"/v1x/chat", V1, REFUSED),
    (b"/v10/chat", V1, REFUSED),
    (b"/", V1, REFUSED),
    (b"/healthz", V1, REFUSED),
    # encoded separators
    (b"/v1/chat%2Fcompletions", V1, REFUSED),
    (b"/v1/chat%2fcompletions", V1, REFUSED),
    (b"/v1%2fchat/completions", V1, REFUSED),
    (b"/v1/chat%5ccompletions", V1, REFUSED),
    (b"/v1/chat%5Ccompletions", V1, REFUSED),
    (b"/v1\\chat", V1, REFUSED),
    (b"/v1/chat\\..\\..\\x", V1, REFUSED),
    # control characters, literal or encoded
    (b"/v1/%00", V1, REFUSED),
    (b"/v1/chat\x00/completions", V1, REFUSED),
    (b"/v1/chat%0d%0aX-Injected:%20yes", V1, REFUSED),
    (b"/v1/chat\r\n", V1, REFUSED),
    (b"/v1/%7f", V1, REFUSED),
    (b"/v1/%1F", V1, REFUSED),
    # not a valid path
    (b"", V1, REFUSED),
    (b"v1/chat/completions", V1, REFUSED),
    (b"/v1/chat%", V1, REFUSED),
    (b"/v1/chat%2", V1, REFUSED),
    (b"/v1/chat%zz", V1, REFUSED),
    (b"/v1/chat completions", V1, REFUSED),
    (b"/v1/caf\xc3\xa9", V1, REFUSED),
    (b"/v1/chat?x=1", V1, REFUSED),
    (b'/v1/"chat"', V1, REFUSED),
]


@pytest.mark.parametrize(("raw", "mounts", "expected"), SPELLINGS)
def test_each_spelling_maps_to_its_canonical_path_or_is_refused(
    raw: bytes, mounts: frozenset[str], expected: str | None
) -> None:
    if expected is None:
        with pytest.raises(BadRequest) as info:
            canonical_path(raw, mounts)
        assert info.value.code == "invalid_path"
        assert info.value.status == 400 and info.value.error_type == "invalid_request_error"
    else:
        assert canonical_path(raw, mounts) == expected


def test_the_refusal_names_the_path_and_why() -> None:
    with pytest.raises(BadRequest) as info:
        canonical_path(b"/v1/chat%2Fcompletions", V1)
    assert "/v1/chat%2Fcompletions" in info.value.message and "encoded '/'" in info.value.message


PIECES = st.sampled_from(
    [
        "/", "//", ".", "..", "%2e", "%2E", ".%2e", "%2e%2e", "%2f", "%2F", "%5c", "%5C",
        "\\", "v1", "api", "chat", "completions", "%63", "%43", "%7e", "~", "%00", "%0a",
        "%", "%z", "%25", "%C3%a9", "?", " ", "a", ":", "@", ";", "\x00", "\x7f",
    ]
)  # fmt: skip
PATHS = st.one_of(
    st.builds(
        lambda head, rest: (head + "".join(rest)).encode("utf-8"),
        st.sampled_from(["", "/", "/v1", "/v1/", "/api/", "/v1/x/"]),
        st.lists(PIECES, max_size=12),
    ),
    st.binary(max_size=40).map(lambda b: b"/v1/" + b),
)


@settings(max_examples=300, deadline=None)
@given(raw=PATHS, mounts=st.sampled_from([V1, BOTH]))
def test_any_path_is_refused_or_canonical_under_a_mount(raw: bytes, mounts: frozenset[str]) -> None:
    try:
        path = canonical_path(raw, mounts)
    except BadRequest as exc:
        assert exc.code == "invalid_path"
        return
    assert any(path == m or path.startswith(m + "/") for m in mounts), path
    wrapped = path + "/"
    assert "/./" not in wrapped and "/../" not in wrapped and "//" not in path, path
    assert "\\" not in path and "%2F" not in path.upper() and "%5C" not in path.upper(), path
    assert path.isascii() and path.isprintable(), path
    assert canonical_path(path.encode("ascii"), mounts) == path
