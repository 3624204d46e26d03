# shelf.py: a lending library
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Column, Integer, MetaData, String, Table
from eventfold import App, Aggregate, Change, Command, Event, Projection, Rejected, declare_stream

class AddBook(Command):
    title: str = Field(min_length=1, max_length=200)
class LendBook(Command):
    member: str = Field(min_length=1, max_length=100)
class ReturnBook(Command):
    pass
class BookAdded(Event):
    title: str
class BookLent(Event):
    member: str
class BookReturned(Event):
    pass

BOOK = declare_stream("book", commands=[AddBook, LendBook, ReturnBook], events=[BookAdded, BookLent, BookReturned])

class Book(BaseModel):
    model_config = ConfigDict(frozen=True)
    added: bool = False
    lent_to: str | None = None

def decide(state: Book, command: Command) -> list[Event]:
    if isinstance(command, AddBook):
        if state.added:
            raise Rejected("book_exists", "this book is already on the shelf")
        return [BookAdded(title=command.title)]
    if not state.added:
        raise Rejected("no_such_book", "add the book first")
    if isinstance(command, LendBook):
        if state.lent_to is not None:
            raise Rejected("book_lent", f"lent to {state.lent_to}")
        return [BookLent(member=command.member)]
    if isinstance(command, ReturnBook):
        if state.lent_to is None:
            raise Rejected("book_not_lent", "the book is on the shelf")
        return [BookReturned()]
    raise TypeError(type(command).__name__)

def evolve(state: Book, event: Event) -> Book:
    if isinstance(event, BookAdded):
        return Book(added=True)
    if isinstance(event, BookLent):
        return Book(added=True, lent_to=event.member)
    return Book(added=True)

metadata = MetaData()
books = Table("books", metadata,
    Column("id", String(128), primary_key=True), Column("version", Integer, nullable=False),
    Column("title", String(200), nullable=False), Column("lent_to", String(100)),
    Column("times_lent", Integer, nullable=False))
loans = Table("book_loans", metadata,  # a child table: first key column = document id, second = version
    Column("book_id", String(128), primary_key=True), Column("version", Integer, primary_key=True),
    Column("member", String(100), nullable=False))

def added(doc, env, e):
    return Change({"title": e.title, "lent_to": None, "times_lent": 0})
def lent(doc, env, e):
    return Change({**doc, "lent_to": e.member, "times_lent": doc["times_lent"] + 1},
                  appends=[(loans, {"book_id": env.stream_id, "version": env.version, "member": e.member})])
def returned(doc, env, e):
    return Change({**doc, "lent_to": None})

app = App(
    name="shelf",
    aggregates=[Aggregate(contract=BOOK, initial=Book(), decide=decide, evolve=evolve)],
    projections=[Projection(name="books", contract=BOOK, doc_table=books, child_tables=[loans],
                            handlers={"BookAdded": added, "BookLent": lent, "BookReturned": returned},
                            filters=["lent_to", "title"])],
)
