"""The people/objects model: identify merges, tags, alias, group and associations."""

from __future__ import annotations

from typing import Any

import pytest

from encharge_async.emulator import Emulator, Person
from encharge_async.emulator._model import PeopleModel

from .conftest import MODULE_LOOP, Post

pytestmark = MODULE_LOOP


def _person(emu: Emulator, **key: Any) -> Person:
    person = emu.person(**key)
    assert person is not None, key
    return person


async def _accept(post: Post, body: dict[str, Any]) -> None:
    response = await post(body)
    assert response.status_code == 200, response.text


async def test_identify_and_track_merge_fields_and_add_tags(emu: Emulator, post: Post):
    await _accept(
        post,
        {
            "name": "Registered user",
            "user": {
                "email": "ann@example.com",
                "firstName": "Ann",
                "plan": "free",
                "tags": "a, b",
            },
            "properties": {"trial": {"days": 14}},
        },
    )
    await _accept(
        post,
        {"name": "identify", "user": {"email": "ann@example.com", "plan": "pro", "tags": "b,,c "}},
    )
    await _accept(post, {"name": "Created page", "user": {"email": "ANN@example.com"}})
    person = _person(emu, email="ann@example.com")
    assert person.fields == {"firstName": "Ann", "plan": "pro"}
    assert person.tags == frozenset({"a", "b", "c"})
    assert person.events == ("Registered user", "Created page")  # identify is not an event
    assert person.user_id is None
    assert emu.person(email="Ann@Example.com") == person
    assert len(emu.people) == 1


async def test_numeric_and_text_user_ids_are_the_same_person(emu: Emulator, post: Post):
    await _accept(post, {"name": "One", "user": {"userId": 123}})
    await _accept(post, {"name": "Two", "user": {"userId": "123", "email": "u@b.c"}})
    person = _person(emu, user_id=123)
    assert person.user_id == "123"
    assert person.email == "u@b.c"
    assert person.events == ("One", "Two")
    assert emu.person(user_id="124") is None
    assert emu.person(email="nobody@b.c") is None


async def test_identify_by_user_id_with_a_new_email_changes_the_email(emu: Emulator, post: Post):
    await _accept(post, {"name": "identify", "user": {"userId": "u1", "email": "old@b.c"}})
    await _accept(post, {"name": "identify", "user": {"userId": "u1", "email": "new@b.c"}})
    assert emu.person(email="old@b.c") is None
    assert _person(emu, email="new@b.c").user_id == "u1"


async def test_identify_joining_two_people_merges_them(emu: Emulator, post: Post):
    await _accept(post, {"name": "Visited", "user": {"email": "ann@b.c", "tags": "lead", "x": 1}})
    await _accept(post, {"name": "Paid", "user": {"userId": "u1", "tags": "customer", "x": 2}})
    await _accept(post, {"name": "Visited again", "user": {"email": "ann@b.c"}})
    assert len(emu.people) == 2
    await _accept(post, {"name": "identify", "user": {"userId": "u1", "email": "ann@b.c"}})
    [person] = emu.people
    assert (person.email, person.user_id) == ("ann@b.c", "u1")
    assert person.events == ("Visited", "Paid", "Visited again")
    assert person.tags == frozenset({"lead", "customer"})
    assert person.fields == {"x": 2}  # the person found by userId wins


async def test_alias_changes_the_email(emu: Emulator, post: Post):
    await _accept(post, {"name": "Signed up", "user": {"email": "old@b.c", "userId": "u1"}})
    await _accept(post, {"type": "alias", "previousEmail": "old@b.c", "user": {"email": "new@b.c"}})
    await _accept(post, {"name": "Upgraded", "user": {"email": "new@b.c"}})
    assert emu.person(email="old@b.c") is None
    person = _person(emu, email="new@b.c")
    assert person.user_id == "u1"
    assert person.events == ("Signed up", "Upgraded")
    assert len(emu.people) == 1
    assert [e.type for e in emu.events] == [None, "alias", None]


async def test_alias_changes_the_user_id(emu: Emulator, post: Post):
    await _accept(post, {"name": "Signed up", "user": {"userId": 1, "email": "a@b.c"}})
    await _accept(post, {"type": "alias", "previousUserId": 1, "user": {"userId": "acct-1"}})
    assert emu.person(user_id=1) is None
    assert _person(emu, user_id="acct-1").email == "a@b.c"


async def test_alias_onto_an_existing_person_merges_them(emu: Emulator, post: Post):
    anon = {"userId": "anon-1", "email": "anon@b.c", "tags": "web"}
    await _accept(post, {"name": "Anonymous visit", "user": anon})
    await _accept(post, {"name": "Signed up", "user": {"userId": "u1", "email": "a@b.c"}})
    await _accept(post, {"name": "Second visit", "user": {"userId": "anon-1"}})
    await _accept(post, {"type": "alias", "previousUserId": "anon-1", "user": {"userId": "u1"}})
    # The person being aliased wins where both have a value (here: the email).
    [person] = emu.people
    assert (person.user_id, person.email) == ("u1", "anon@b.c")
    assert emu.person(email="a@b.c") is None
    assert person.events == ("Anonymous visit", "Signed up", "Second visit")
    assert person.tags == frozenset({"web"})


async def test_alias_of_an_unknown_person(emu: Emulator, post: Post):
    await _accept(post, {"type": "alias", "previousEmail": "ghost@b.c", "user": {"email": "n@b.c"}})
    assert _person(emu, email="n@b.c").events == ()
    # The previous id is unknown but the new one exists: that person is updated.
    await _accept(
        post,
        {"type": "alias", "previousUserId": "gone", "user": {"email": "n@b.c", "userId": "u9"}},
    )
    [person] = emu.people
    assert (person.email, person.user_id) == ("n@b.c", "u9")


async def test_group_creates_and_updates_an_object_and_associates_people(emu: Emulator, post: Post):
    await _accept(
        post,
        {
            "type": "group",
            "objectType": "company",
            "properties": {"externalId": "acme", "name": "Acme", "size": 10},
            "user": {"email": "ann@acme.io", "firstName": "Ann"},
        },
    )
    await _accept(
        post,
        {
            "type": "group",
            "objectType": "company",
            "properties": {"externalId": "acme", "size": 12},
            "user": {"userId": "bob"},
        },
    )
    await _accept(
        post,
        {
            "type": "group",
            "objectType": "company",
            "properties": {"externalId": "acme"},
            "user": {"email": "ann@acme.io"},
        },
    )
    [company] = emu.objects
    assert company.object_type == "company"
    assert company.external_id == "acme"
    assert company.id == "obj_1"
    assert company.properties == {"name": "Acme", "size": 12}
    ann, bob = _person(emu, email="ann@acme.io"), _person(emu, user_id="bob")
    assert company.people == (ann.id, bob.id)
    assert ann.objects == (("company", "obj_1"),)
    assert ann.fields == {"firstName": "Ann"}
    assert ann.events == ()
    assert emu.object("company", external_id="acme") == company
    assert emu.object("company", id="obj_1") == company
    assert emu.object("team", id="obj_1") is None


async def test_group_by_id_and_external_id_changes(emu: Emulator, post: Post):
    group = {"type": "group", "objectType": "company"}
    await _accept(post, {**group, "properties": {"id": 42, "name": "Initech"}})
    await _accept(post, {**group, "properties": {"id": "42", "externalId": "ini"}})
    await _accept(post, {**group, "properties": {"id": "42", "externalId": "initech"}})
    await _accept(post, {**group, "properties": {"externalId": "initech", "tier": "gold"}})
    await _accept(post, {"type": "group", "objectType": "team", "properties": {"name": "Ops"}})
    company = emu.object("company", id="42")
    assert company is not None
    assert company.external_id == "initech"
    assert company.properties == {"name": "Initech", "tier": "gold"}
    assert emu.object("company", external_id="ini") is None
    assert [o.id for o in emu.objects] == ["42", "obj_1"]
    assert emu.object("company") is None


async def test_merging_people_keeps_their_objects(emu: Emulator, post: Post):
    group = {"type": "group", "objectType": "company"}
    await _accept(post, {**group, "properties": {"externalId": "a"}, "user": {"userId": "u1"}})
    await _accept(post, {**group, "properties": {"externalId": "b"}, "user": {"email": "x@b.c"}})
    await _accept(post, {**group, "properties": {"externalId": "a"}, "user": {"email": "x@b.c"}})
    await _accept(post, {**group, "properties": {"externalId": "c"}, "user": {"userId": "u1"}})
    await _accept(post, {"type": "alias", "previousEmail": "x@b.c", "user": {"userId": "u1"}})
    [person] = emu.people
    assert person.objects == (("company", "obj_2"), ("company", "obj_1"), ("company", "obj_3"))
    assert [o.people for o in emu.objects] == [(person.id,)] * 3


async def test_snapshots_do_not_change_the_model(emu: Emulator, post: Post):
    await _accept(post, {"name": "x", "user": {"email": "a@b.c", "nested": {"k": 1}}})
    person = _person(emu, email="a@b.c")
    person.fields["nested"]["k"] = 2
    assert _person(emu, email="a@b.c").fields == {"nested": {"k": 1}}
    assert person.to_dict() == {
        "id": person.id,
        "email": "a@b.c",
        "userId": None,
        "fields": {"nested": {"k": 2}},
        "tags": [],
        "events": ["x"],
        "objects": [],
    }


async def test_person_lookup_needs_exactly_one_identifier():
    model = PeopleModel()
    with pytest.raises(ValueError, match="exactly one"):
        model.person()
    with pytest.raises(ValueError, match="exactly one"):
        model.person(email="a@b.c", user_id="u1")
    model.apply({"name": "x", "user": {"userId": 1}}, 1)
    assert model.person(user_id=True) is None  # a boolean is not the userId 1


@pytest.mark.slow
async def test_objects_can_be_filtered_by_type():
    model = PeopleModel()
    model.apply({"type": "group", "objectType": "company"}, 1)
    model.apply({"type": "group", "objectType": "team"}, 2)
    assert [o.object_type for o in model.objects("team")] == ["team"]
    assert len(model.objects()) == 2
    model.clear()
    assert model.objects() == []
