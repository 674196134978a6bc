"""The fast path's hand-framed messages against jupyter_client's own Session: same wire format."""

from __future__ import annotations

import pytest
from jupyter_client.session import Session

from cellserve.wire import DELIM, BadMessage, CommWire

KEY = b"a-secret-key"


def wire_for(session: Session, comm_id: str = "c0ffee") -> CommWire:
    return CommWire(session.auth, session.session, session.username, comm_id)


def test_a_comm_msg_is_what_the_kernel_session_accepts() -> None:
    ours, kernel = Session(key=KEY), Session(key=KEY)
    msg_id, frames = wire_for(ours).comm_msg({"key": "k", "request": '{"body": "é"}'})
    assert frames[0] == DELIM
    message = kernel.deserialize(frames[1:])
    assert message["header"]["msg_id"] == msg_id
    assert message["header"]["msg_type"] == "comm_msg"
    assert message["header"]["session"] == ours.session
    assert message["content"] == {
        "comm_id": "c0ffee",
        "data": {"key": "k", "request": '{"body": "é"}'},
    }


def test_message_ids_never_repeat() -> None:
    wire = wire_for(Session(key=KEY))
    ids = {wire.comm_msg({})[0] for _ in range(100)}
    assert len(ids) == 100


def test_an_answer_from_the_kernel_session_is_read() -> None:
    ours, kernel = Session(key=KEY), Session(key=KEY)
    wire = wire_for(ours)
    parent = ours.msg("comm_msg", {})
    answer = kernel.msg("comm_msg", {"comm_id": "c0ffee", "data": {"status": "ok"}}, parent=parent)
    frames = kernel.serialize(answer, ident=wire.topic)
    assert wire.answer(frames) == (parent["header"]["msg_id"], {"status": "ok"})


def test_other_topics_are_not_decoded() -> None:
    kernel = Session(key=KEY)
    frames = kernel.serialize(kernel.msg("status", {"execution_state": "idle"}), ident=b"x.status")
    assert wire_for(Session(key=KEY)).answer(frames) is None


def test_a_wrongly_signed_answer_is_refused() -> None:
    wire = wire_for(Session(key=KEY))
    forger = Session(key=b"another-key")
    answer = forger.msg("comm_msg", {"comm_id": "c0ffee", "data": {}}, parent=forger.msg("x"))
    with pytest.raises(BadMessage, match="signature"):
        wire.answer(forger.serialize(answer, ident=wire.topic))


def test_a_truncated_answer_is_refused() -> None:
    wire = wire_for(Session(key=KEY))
    with pytest.raises(BadMessage):
        wire.answer([wire.topic, DELIM, b"sig"])


def test_unsigned_sessions_work_both_ways() -> None:
    ours, kernel = Session(key=b""), Session(key=b"")
    wire = wire_for(ours)
    _, frames = wire.comm_msg({"a": 1})
    assert frames[1] == b""
    assert kernel.deserialize(frames[1:])["content"]["data"] == {"a": 1}
    parent = ours.msg("comm_msg", {})
    answer = kernel.msg("comm_msg", {"comm_id": "c0ffee", "data": {"b": 2}}, parent=parent)
    assert wire.answer(kernel.serialize(answer, ident=wire.topic)) == (
        parent["header"]["msg_id"],
        {"b": 2},
    )
