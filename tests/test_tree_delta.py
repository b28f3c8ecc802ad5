"""Page changes as edit scripts: real-looking steps, typed errors, and hypothesis properties.

The contract: for trees with unique ids, ``apply_delta(b, tree_delta(b, a))`` renders as ``a``
whenever a delta is returned; the text form round-trips; reading arbitrary text raises
nothing but :class:`DeltaError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from websynthesis.web.observation import AXNode, AXTree, parse_axtree
from websynthesis.web.tree_delta import (
    Change,
    Delta,
    DeltaError,
    DeltaErrorKind,
    Insert,
    Remove,
    apply_delta,
    parse_delta,
    tree_delta,
)

# Per-test settings, not a profile: loading a profile would change every other test module.
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def page(*lines: str, title: str | None = None) -> AXTree:
    header = f"Tab 0 (current): {title}\n\n" if title is not None else ""
    return parse_axtree(header + "\n".join(lines))


# --- a table of real-looking steps ----------------------------------------------------------

ENTER_TEXT = page(
    "[2] RootWebArea 'Enter Text Task' focused: True",
    "\t[7] StaticText 'Enter \"Kasie\" into the text field and press Submit.'",
    "\t[10] textbox '' required: False",
    "\t[12] button 'Submit'",
    "\t[14] StaticText 'Last reward: 0'",
    "\t[15] StaticText 'Last 10 average: 0'",
    "\t[16] StaticText 'Time left: 9 / 10sec'",
    title="Enter Text Task",
)
CHECKBOXES = page(
    "[3] RootWebArea 'Click Checkboxes Task' focused: True",
    "\t[8] StaticText 'Select ICUXCr, lYc and click Submit.'",
    "\t[11] LabelText ''",
    "\t\t[12] checkbox 'ICUXCr' checked: false",
    "\t\t[13] StaticText 'ICUXCr'",
    "\t[14] LabelText ''",
    "\t\t[15] checkbox 'lYc' checked: false",
    "\t\t[16] StaticText 'lYc'",
    "\t[17] LabelText ''",
    "\t\t[18] checkbox 'qv' checked: false",
    "\t\t[19] StaticText 'qv'",
    "\t[20] button 'Submit'",
    title="Click Checkboxes Task",
)
SHOP = page(
    "[1] RootWebArea 'One Stop Market' focused: True",
    "\t[1306] link 'My Account'",
    "\t[1307] link 'My Wish List'",
    "\t[232] combobox '\\ue615 Search' autocomplete: both hasPopup: listbox required: False "
    "expanded: False",
    "\t[240] navigation 'Categories'",
    "\t\t[2495] menuitem '\\ue622 Beauty &amp; Personal Care' hasPopup: menu",
    "\t\t[2496] menuitem 'Electronics' hasPopup: menu",
    "\t[300] main ''",
    "\t\t[301] heading 'Product Showcases'",
    "\t\t[302] link 'Pre-baked Gingerbread House Kit'",
    "\t\t[303] StaticText '$19.99'",
    "\t\t[304] link 'V8 +Energy, Healthy Energy Drink'",
    "\t\t[305] StaticText '$14.47'",
    title="One Stop Market",
)
DIALOG = page(
    "[4] RootWebArea 'Click Dialog Task' focused: True",
    "\t[9] StaticText 'Close the dialog box by clicking the \"x\".'",
    "\t[20] dialog 'Tristique' modal: False",
    "\t\t[21] button 'Close'",
    "\t\t[22] StaticText 'Nunc. Ut facilisi ac.'",
    "\t[30] StaticText 'Last reward: 0'",
    title="Click Dialog Task",
)


def edited(tree: AXTree, *pairs: tuple[str, str]) -> AXTree:
    text = tree.render()
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new)
    return parse_axtree(text)


@dataclass(frozen=True)
class Step:
    name: str
    before: AXTree
    after: AXTree
    delta: str | None  # the expected text; None: a whole page is shorter or needed
    complete: dict[str, str] = field(default_factory=dict)


STEPS = [
    Step(
        "miniwob enter-text: type",
        ENTER_TEXT,
        edited(ENTER_TEXT, ("[10] textbox '' required: False",
                            "[10] textbox '' focused: True required: False value: Kasie")),
        "<changes>\n~ [10] textbox '' focused: True required: False value: Kasie\n</changes>",
    ),
    Step(
        "miniwob click-checkboxes: tick two",
        CHECKBOXES,
        edited(CHECKBOXES, ("'ICUXCr' checked: false", "'ICUXCr' focused: True checked: true"),
               ("'lYc' checked: false", "'lYc' checked: true")),
        "<changes>\n~ [12] checkbox 'ICUXCr' focused: True checked: true\n"
        "~ [15] checkbox 'lYc' checked: true\n</changes>",
    ),
    Step(
        "webarena shop: the search box opens its suggestions",
        SHOP,
        edited(SHOP, ("expanded: False", "expanded: True focused: True"),
               ("\t[240] navigation", "\t[900] listbox ''\n\t\t[901] option 'headphones'\n"
                "\t\t[902] option 'headphones wireless'\n\t[240] navigation")),
        "<changes>\n"
        "~ [232] combobox '\\ue615 Search' autocomplete: both hasPopup: listbox required: False "
        "expanded: True focused: True\n"
        "+ after [232]\n[900] listbox ''\n\t[901] option 'headphones'\n"
        "\t[902] option 'headphones wireless'\n</changes>",
    ),
    Step(
        "webarena shop: hover opens a submenu",
        SHOP,
        edited(SHOP, ("'Electronics' hasPopup: menu", "'Electronics' hasPopup: menu expanded: "
                      "True\n\t\t\t[3001] menu ''\n\t\t\t\t[3002] menuitem 'Headphones'")),
        "<changes>\n~ [2496] menuitem 'Electronics' hasPopup: menu expanded: True\n"
        "+ in [2496]\n[3001] menu ''\n\t[3002] menuitem 'Headphones'\n</changes>",
    ),
    Step(
        "miniwob click-dialog: the dialog closes",
        DIALOG,
        edited(DIALOG, ("\t[20] dialog 'Tristique' modal: False\n\t\t[21] button 'Close'\n"
                        "\t\t[22] StaticText 'Nunc. Ut facilisi ac.'\n", ""),
               ("'Last reward: 0'", "'Last reward: 1'")),
        "<changes>\n- [20]\n~ [30] StaticText 'Last reward: 1'\n</changes>",
    ),
    Step(
        "webarena shop: scroll down",
        SHOP,
        edited(SHOP, ("\t[1306] link 'My Account'\n\t[1307] link 'My Wish List'\n", ""),
               ("'$14.47'",
                "'$14.47'\n\t\t[306] link 'Tea Tree Oil'\n\t\t[307] StaticText '$8.99'")),
        "<changes>\n- [1306]\n- [1307]\n+ after [305]\n[306] link 'Tea Tree Oil'\n"
        "[307] StaticText '$8.99'\n</changes>",
    ),
    Step("nothing visible happens", SHOP, SHOP, "<changes>\n</changes>"),
    Step(
        "a new tab opens",
        DIALOG,
        edited(DIALOG, ("Tab 0 (current): Click Dialog Task",
                        "Tab 0: Click Dialog Task | Tab 1 (current): New Tab")),
        "<changes>\nheader Tab 0: Click Dialog Task | Tab 1 (current): New Tab\n</changes>",
    ),
    Step(
        "webarena: following a link loads another page (the root changes)",
        SHOP,
        page("[77] RootWebArea 'My Account' focused: True", "\t[78] heading 'My Account'",
             title="My Account"),
        None,
    ),
    Step(
        "a change as long as the page is written whole",
        page("[1] RootWebArea 'a'", "\t[2] link 'b'"),
        page("[1] RootWebArea 'c'", "\t[2] link 'd'"),
        None,
        {"shorter": "<changes>\n~ [1] RootWebArea 'c'\n~ [2] link 'd'\n</changes>"},
    ),
]  # fmt: skip


@pytest.mark.parametrize("step", STEPS, ids=[step.name for step in STEPS])
def test_real_looking_steps(step: Step) -> None:
    delta = tree_delta(step.before, step.after)
    assert (None if delta is None else delta.render()) == step.delta
    full = tree_delta(step.before, step.after, only_if_shorter=False)
    if "shorter" in step.complete:
        assert full is not None and full.render() == step.complete["shorter"]
    for found in (delta, full):
        if found is not None:
            assert apply_delta(step.before, found).render() == step.after.render()
            assert parse_delta(found.render()) == found
            assert len(found.render()) < len(step.after.render()) or found is full


def test_a_moved_element_is_removed_and_inserted_again() -> None:
    before = page("[1] RootWebArea 'x'", "\t[2] link 'a'", "\t[3] link 'b'", "\t\t[4] img 'i'")
    after = page("[1] RootWebArea 'x'", "\t[3] link 'b'", "\t\t[4] img 'i'", "\t[2] link 'a'")
    delta = tree_delta(before, after, only_if_shorter=False)
    assert delta is not None
    assert delta.render() == "<changes>\n- [2]\n+ after [3]\n[2] link 'a'\n</changes>"
    assert apply_delta(before, delta).render() == after.render()


def test_inexpressible_pairs_give_none() -> None:
    good = page("[1] RootWebArea 'x'", "\t[2] link 'a'")
    duplicated = page("[1] RootWebArea 'x'", "\t[2] link 'a'", "\t[2] link 'b'")
    idless = parse_axtree("[a1] RootWebArea 'x'\n\tStaticText 'hi'")  # BrowserGym allows it
    assert not idless.errors
    assert tree_delta(good, duplicated, only_if_shorter=False) is None
    assert tree_delta(duplicated, good, only_if_shorter=False) is None
    assert tree_delta(idless, idless, only_if_shorter=False) is None
    headerless = parse_axtree(good.render().split("\n\n")[-1])
    titled = page("[1] RootWebArea 'x'", "\t[2] link 'a'", title="x")
    assert tree_delta(titled, headerless, only_if_shorter=False) is None  # a header dropped
    assert tree_delta(headerless, titled, only_if_shorter=False) == Delta("Tab 0 (current): x")


def test_the_applied_page_keeps_raw_lines_and_the_trailer() -> None:
    raw = '[1] RootWebArea "Kid\'s"\n\t[2] StaticText "a\\\'b" x: y\n'
    before = parse_axtree(raw)
    after = apply_delta(before, parse_delta("<changes>\n+ in [1]\n[3] button 'OK'\n</changes>"))
    assert after.render() == "[1] RootWebArea \"Kid's\"\n\t[3] button 'OK'\n\t[2] StaticText " \
        "\"a\\'b\" x: y\n"  # fmt: skip


# --- typed errors ---------------------------------------------------------------------------

FORM = page(
    "[1] RootWebArea 'Form'", "\t[12] StaticText 'Old'", "\t[14] textbox 'Name'", "\t[17] group ''"
)


@pytest.mark.parametrize(
    ("text", "kind", "line"),
    [
        ("", DeltaErrorKind.BAD_ENVELOPE, 1),
        ("Sure!\n<changes>\n</changes>", DeltaErrorKind.BAD_ENVELOPE, 1),
        ("\n\n<changes>\n- [12]", DeltaErrorKind.UNCLOSED, 4),
        ("<changes>\n- [12]\nok\n</changes>", DeltaErrorKind.BAD_LINE, 3),
        ("<changes>\n-[12]\n</changes>", DeltaErrorKind.BAD_LINE, 2),
        ("<changes>\n+ before [12]\n[30] x 'y'\n</changes>", DeltaErrorKind.BAD_LINE, 2),
        ("<changes>\nheader Title\n</changes>", DeltaErrorKind.BAD_HEADER, 2),
        ("<changes>\nheader Tab 0 (current): a\nheader Tab 0 (current): b\n</changes>",
         DeltaErrorKind.BAD_HEADER, 3),
        ("<changes>\n~ [14] textbox Name\n</changes>", DeltaErrorKind.BAD_ELEMENT, 2),
        ("<changes>\n~ textbox 'Name'\n</changes>", DeltaErrorKind.BAD_ELEMENT, 2),
        ("<changes>\n~ \t[14] textbox 'Name'\n</changes>", DeltaErrorKind.BAD_ELEMENT, 2),
        ("<changes>\n+ in [17]\n[30] x 'y'\n\tbutton 'OK'\n</changes>",
         DeltaErrorKind.BAD_ELEMENT, 4),
        ("<changes>\n+ in [17]\n</changes>", DeltaErrorKind.BAD_BLOCK, 2),
        ("<changes>\n+ in [17]\n\t[30] x 'y'\n</changes>", DeltaErrorKind.BAD_BLOCK, 3),
        ("<changes>\n+ in [17]\n[30] x 'y'\n\t\t[31] x 'z'\n</changes>",
         DeltaErrorKind.BAD_BLOCK, 4),
        ("<changes>\n- [12]\n[30] x 'y'\n</changes>", DeltaErrorKind.BAD_BLOCK, 3),
        ("<changes>\n- [99]\n</changes>", DeltaErrorKind.UNKNOWN_ID, 2),
        ("<changes>\n- [12]\n~ [12] StaticText 'New'\n</changes>", DeltaErrorKind.UNKNOWN_ID, 3),
        ("<changes>\n+ after [12]\n[30] x 'y'\n\t[14] x 'z'\n</changes>",
         DeltaErrorKind.ID_CLASH, 4),
        ("<changes>\n+ in [17]\n[30] x 'y'\n[30] x 'z'\n</changes>", DeltaErrorKind.ID_CLASH, 4),
        ("<changes>\n\n- [1]\n</changes>", DeltaErrorKind.ROOT_EDIT, 3),
        ("<changes>\n+ after [1]\n[30] x 'y'\n</changes>", DeltaErrorKind.ROOT_EDIT, 2),
    ],
)  # fmt: skip
def test_errors_name_their_kind_and_line(text: str, kind: DeltaErrorKind, line: int) -> None:
    with pytest.raises(DeltaError) as caught:
        apply_delta(FORM, parse_delta(text))
    assert (caught.value.kind, caught.value.line) == (kind, line), caught.value
    assert str(caught.value).startswith(f"delta line {line}: {kind}: ")


def test_edits_built_in_code_are_checked_and_located_as_rendered() -> None:
    bad = Delta(
        "Tab 0 (current): t", (Remove("12"), Change("[14] textbox"), Insert("17", True, ()))
    )
    with pytest.raises(DeltaError) as caught:
        apply_delta(FORM, bad)
    assert (caught.value.kind, caught.value.line) == (DeltaErrorKind.BAD_ELEMENT, 4)
    with pytest.raises(DeltaError) as caught:
        apply_delta(FORM, Delta(edits=(Remove("12"), Insert("17", True, ()))))
    assert (caught.value.kind, caught.value.line) == (DeltaErrorKind.BAD_BLOCK, 3)
    twice = parse_axtree("[1] RootWebArea 'x'\n\t[2] link 'a'\n\t[2] link 'b'")
    with pytest.raises(DeltaError) as caught:
        apply_delta(twice, Delta(edits=(Remove("2"),)))
    assert caught.value.kind is DeltaErrorKind.AMBIGUOUS_ID


def test_blank_lines_and_surrounding_whitespace_are_allowed() -> None:
    assert parse_delta("  \n<changes></changes>\n") == Delta()
    assert not parse_delta("<changes>\n\n</changes>")
    spaced = parse_delta("<changes>\n\n- [12]\n\n+ in [1]\n[30] x 'y'\n\n</changes>")
    assert spaced == Delta(edits=(Remove("12"), Insert("1", True, ("[30] x 'y'",))))


# --- properties -------------------------------------------------------------------------

LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
ROLES = st.sampled_from(["link", "button", "StaticText", "generic", "textbox", "option"])
NAMES = st.text(max_size=20)
KEYS = st.sampled_from(["focused", "required", "expanded", "checked", "value", "url"])
VALUES = st.text(st.characters(exclude_characters="\n\r"), max_size=10)
PROPS = st.dictionaries(KEYS, VALUES, max_size=2)
TITLES = st.text(st.characters(exclude_characters="\n\r|"), max_size=12)


@dataclass
class Element:
    """A mutable element for building edited trees."""

    id: str
    role: str
    name: str
    props: dict[str, str]
    children: list[Element] = field(default_factory=list)

    def walk(self) -> list[Element]:
        return [self, *(node for child in self.children for node in child.walk())]


def to_tree(root: Element, header: str | None) -> AXTree:
    nodes: list[AXNode] = []

    def visit(element: Element, depth: int) -> None:
        nodes.append(AXNode(element.id, element.role, element.name, element.props, depth))
        for child in element.children:
            visit(child, depth + 1)

    visit(root, 0)
    return AXTree.from_nodes(nodes, header=header)


def copy(element: Element) -> Element:
    return Element(element.id, element.role, element.name, dict(element.props),
                   [copy(child) for child in element.children])  # fmt: skip


def parent_of(root: Element, target: Element) -> Element:
    return next(node for node in root.walk() if any(c is target for c in node.children))


@st.composite
def element_trees(draw: st.DrawFn, ids: list[str]) -> Element:
    root = Element(ids[0], "RootWebArea", draw(NAMES), draw(PROPS))
    for node_id in ids[1:]:
        parent = draw(st.sampled_from(root.walk()))
        parent.children.append(Element(node_id, draw(ROLES), draw(NAMES), draw(PROPS)))
    return root


@st.composite
def edited_pairs(draw: st.DrawFn) -> tuple[AXTree, AXTree]:
    """A random page and the page after random edits: changes, deletions, insertions, moves."""
    size = draw(st.integers(1, 15))
    pool = draw(st.lists(st.integers(1, 999).map(str), min_size=size + 12, max_size=size + 12,
                         unique=True))  # fmt: skip
    root = draw(element_trees(pool[:size]))
    fresh = pool[size:]
    header = draw(st.none() | TITLES.map(lambda t: f"Tab 0 (current): {t}"))
    before = to_tree(root, header)
    after = copy(root)
    for _ in range(draw(st.integers(0, 6))):
        nodes = after.walk()
        kind = draw(st.sampled_from(["change", "delete", "insert", "move"]))
        target = draw(st.sampled_from(nodes))
        if kind == "change":
            target.name = draw(st.sampled_from([target.name, draw(NAMES)]))
            target.props = draw(PROPS)
            target.role = draw(st.sampled_from([target.role, "button"]))
        elif kind == "delete" and target is not after:
            parent_of(after, target).children.remove(target)
        elif kind == "insert" and fresh:
            new = Element(fresh.pop(), draw(ROLES), draw(NAMES), draw(PROPS))
            if fresh and draw(st.booleans()):
                new.children.append(Element(fresh.pop(), draw(ROLES), draw(NAMES), {}))
            target.children.insert(draw(st.integers(0, len(target.children))), new)
        elif kind == "move" and target is not after:
            parent_of(after, target).children.remove(target)
            places = [n for n in after.walk() if n not in target.walk()]
            place = draw(st.sampled_from(places))
            place.children.insert(draw(st.integers(0, len(place.children))), target)
    new_header = header if header is None or draw(st.booleans()) else header + "!"
    return before, to_tree(after, new_header)


@FAST
@given(edited_pairs())
def test_applying_the_delta_gives_the_page_after(pair: tuple[AXTree, AXTree]) -> None:
    before, after = pair
    delta = tree_delta(before, after, only_if_shorter=False)
    assert delta is not None  # unique ids, one root kept, header not dropped: expressible
    assert apply_delta(before, delta).render() == after.render()
    assert parse_delta(delta.render()) == delta
    short = tree_delta(before, after)
    assert short is None or (short == delta and len(short.render()) < len(after.render()))
    if before.render() == after.render():
        assert delta == Delta()


FRAGMENTS = st.sampled_from([
    "<changes>", "</changes>", "- [12]", "- [1]", "-[3]", "+ after [14]", "+ in [1]", "+ in [",
    "~ [14] textbox 'Name' focused: True", "~ [99] x 'y'", "[30] StaticText 'Done'",
    "\t[31] button 'OK'", "\t\t[32] x 'z'", "header Tab 0 (current): t", "header Tab 0: t",
    "", " ", "\t", "~ ", "[", "'", "\\",
])  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(FRAGMENTS | st.text(max_size=12), max_size=10), st.booleans())
def test_reading_any_text_raises_only_the_typed_error(parts: list[str], wrap: bool) -> None:
    text = "\n".join(parts)
    if wrap:
        text = f"<changes>\n{text}\n</changes>"
    try:
        delta = parse_delta(text)
    except DeltaError as error:
        assert error.kind in DeltaErrorKind and (error.line is None or error.line >= 1)
        return
    assert parse_delta(delta.render()) == delta
    try:
        after = apply_delta(FORM, delta)
    except DeltaError:
        return
    assert not after.errors


@FAST
@given(st.text(max_size=80))
def test_arbitrary_text_never_breaks_the_reader(text: str) -> None:
    for candidate in (text, f"<changes>\n{text}\n</changes>"):
        try:
            parse_delta(candidate)
        except DeltaError:
            pass
