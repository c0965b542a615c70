"""Models: each app's own declarative classes, shared ones by choice."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from rapid_objection.core._config import AppConfig, DatabaseConfig, ModelsConfig
from rapid_objection.core._connections import ConnectionManager, Engines
from rapid_objection.core._errors import ModelLoadError
from rapid_objection.core._models import ROOT, ModelSet, load_models
from tests.core.models_fixture import listed
from tests.core.models_fixture import shop as shop_module

FIXTURE = "tests.core.models_fixture"


def per_app_modules(models: ModelSet) -> list[str]:
    """The names of the module copies made for one model set."""
    prefix = next(cls.__module__ for cls in models.values() if cls.__module__.startswith(ROOT))
    head = ".".join(prefix.split(".")[:2])
    return [name for name in sys.modules if name == head or name.startswith(f"{head}.")]


@pytest.fixture
def load() -> Iterator[Any]:
    """load_models, clearing every set it made at the end of the test."""
    made: list[ModelSet] = []

    def loader(app: str, module: str | None = None, classes: list[str] | None = None) -> ModelSet:
        models = load_models(app, ModelsConfig(module=module, classes=classes or []))
        made.append(models)
        return models

    yield loader
    for models in made:
        models.clear()


class TestPerApp:
    def test_distinct_classes(self, load: Any) -> None:
        """One module loaded for two apps gives each app its own classes and metadata."""
        shop = load("shop", f"{FIXTURE}.shop")
        billing = load("billing", f"{FIXTURE}.shop")
        assert sorted(shop) == ["Country", "User"]
        assert shop["User"] is not billing["User"]
        assert shop["User"] is not shop_module.User
        assert shop["User"].registry is not billing["User"].registry
        assert shop.metadata[0] is not billing.metadata[0]
        assert shop["User"].__module__ == f"{ROOT}.shop.{FIXTURE}.shop"

    def test_shared_class(self, load: Any) -> None:
        """A class marked ``__shared__`` is the normally imported one, for every app."""
        shop = load("shop", f"{FIXTURE}.shop")
        billing = load("billing", f"{FIXTURE}.shop")
        assert shop["Country"] is shop_module.Country
        assert billing["Country"] is shop_module.Country
        assert shop.shared == frozenset({"Country"})
        assert shop_module.Base.metadata in shop.metadata

    def test_relative_base(self, load: Any) -> None:
        """A base imported relatively is copied per app along with the models."""
        shop = load("shop", f"{FIXTURE}.relative")
        billing = load("billing", f"{FIXTURE}.relative")
        assert shop["Order"].registry is not billing["Order"].registry
        assert shop["Order"].__module__.startswith(f"{ROOT}.shop.")
        assert len(shop.registries) == 1

    def test_registry_decorator(self, load: Any) -> None:
        """Classes mapped by ``registry.mapped`` get a registry per app as well."""
        shop = load("shop", f"{FIXTURE}.decorated")
        billing = load("billing", f"{FIXTURE}.decorated")
        assert shop["Note"] is not billing["Note"]
        assert shop.registries[0] is not billing.registries[0]

    def test_same_app_name_twice(self, load: Any) -> None:
        """Two registries in one process may each load an app of the same name."""
        first = load("shop", f"{FIXTURE}.shop")
        second = load("shop", f"{FIXTURE}.shop")
        assert first["User"] is not second["User"]
        assert second["User"].__module__.startswith(f"{ROOT}.shop__2.")

    def test_odd_app_name(self, load: Any) -> None:
        """Any app name makes a valid module name."""
        models = load("shop-eu.1", f"{FIXTURE}.shop")
        assert models["User"].__module__.startswith(f"{ROOT}.shop_eu_1.")

    def test_shared_base_refused(self, load: Any) -> None:
        """A per-app class on a base every app would share is refused, saying what to do."""
        with pytest.raises(ModelLoadError) as caught:
            load("shop", f"{FIXTURE}.absolute")
        assert caught.value.app == "shop"
        assert caught.value.source == f"{FIXTURE}.absolute"
        assert f"{FIXTURE}.base.Base" in str(caught.value)
        assert "__shared__" in str(caught.value)
        assert not [name for name in sys.modules if name.startswith(f"{ROOT}.shop.")]


class TestClasses:
    def test_listed_classes_are_shared(self, load: Any) -> None:
        """``classes`` are the normally imported classes, the same for every app."""
        shop = load("shop", classes=[f"{FIXTURE}.listed:Tag"])
        billing = load("billing", classes=[f"{FIXTURE}.listed:Tag"])
        assert shop["Tag"] is listed.Tag
        assert billing["Tag"] is listed.Tag
        assert shop.shared == frozenset({"Tag"})
        assert shop.metadata == [listed.Base.metadata]

    def test_module_and_classes(self, load: Any) -> None:
        """A module and a list of classes together make one set."""
        models = load("shop", f"{FIXTURE}.shop", [f"{FIXTURE}.listed:Tag"])
        assert sorted(models) == ["Country", "Tag", "User"]
        assert models.shared == frozenset({"Country", "Tag"})

    def test_nothing(self) -> None:
        """No module and no classes, or models disabled, is an empty set."""
        assert len(load_models("shop", ModelsConfig())) == 0
        disabled = ModelsConfig(enabled=False, module=f"{FIXTURE}.shop")
        assert dict(load_models("shop", disabled)) == {}


class TestErrors:
    @pytest.mark.parametrize(
        ("module", "classes", "says"),
        [
            pytest.param(f"{FIXTURE}.broken", [], "broken on purpose", id="module-raises"),
            pytest.param(f"{FIXTURE}.nosuch", [], "no such module", id="no-module"),
            pytest.param("nosuchpackage.models", [], "ModuleNotFoundError", id="no-package"),
            pytest.param(None, [f"{FIXTURE}.listed.Tag"], "package.module:Class", id="no-colon"),
            pytest.param(None, [f"{FIXTURE}.listed:Nope"], "AttributeError", id="no-class"),
            pytest.param(None, [f"{FIXTURE}.listed:NotAModel"], "not a mapped", id="not-mapped"),
            pytest.param(
                None, [f"{FIXTURE}.nosuch:Tag"], "ModuleNotFoundError", id="no-class-module"
            ),
        ],
    )
    def test_load_error(self, module: str | None, classes: list[str], says: str) -> None:
        """What cannot be imported is a ModelLoadError naming the app and the source."""
        with pytest.raises(ModelLoadError) as caught:
            load_models("shop", ModelsConfig(module=module, classes=classes))
        assert caught.value.app == "shop"
        assert caught.value.source == (module or classes[0])
        assert says in str(caught.value)
        assert not [name for name in sys.modules if name.startswith(f"{ROOT}.shop.")]

    def test_error_after_module_cleans_up(self) -> None:
        """A bad listed class undoes the module loaded before it."""
        config = ModelsConfig(module=f"{FIXTURE}.shop", classes=[f"{FIXTURE}.listed:Nope"])
        with pytest.raises(ModelLoadError):
            load_models("shop", config)
        assert not [name for name in sys.modules if name.startswith(f"{ROOT}.shop")]


class TestClear:
    def test_clear(self) -> None:
        """clear() unmaps the app's own classes and drops its modules; shared ones stay."""
        models = load_models("shop", ModelsConfig(module=f"{FIXTURE}.shop"))
        other = load_models("billing", ModelsConfig(module=f"{FIXTURE}.shop"))
        user = models["User"]
        modules = per_app_modules(models)
        assert f"{ROOT}.shop.{FIXTURE}.shop" in modules
        models.clear()
        assert len(models) == 0
        assert sa.inspect(user, raiseerr=False) is None
        assert not [name for name in modules if name in sys.modules]
        assert sa.inspect(shop_module.Country, raiseerr=False) is not None
        assert sa.inspect(other["User"], raiseerr=False) is not None
        models.clear()  # twice is harmless
        other.clear()

    def test_name_free_again(self) -> None:
        """After clear() the app's module name is free for its next registration."""
        first = load_models("shop", ModelsConfig(module=f"{FIXTURE}.shop"))
        first.clear()
        second = load_models("shop", ModelsConfig(module=f"{FIXTURE}.shop"))
        try:
            assert second["User"].__module__ == f"{ROOT}.shop.{FIXTURE}.shop"
        finally:
            second.clear()


class TestInSession:
    def test_insert_and_query(self, load: Any, engines: Engines, database_url: str) -> None:
        """``app.models["User"]`` with ``app.session()`` inserts and queries on every lane."""
        config = AppConfig(database=DatabaseConfig(url=database_url))
        lease = engines.open("shop", config.database, None)
        app = ConnectionManager(
            "shop", config, lease.engine, info_source=lambda: engines.info("shop")
        )
        models = load("shop", f"{FIXTURE}.shop")
        app.models = models
        models.create_all(app.engine)
        user_class, country_class = app.models["User"], app.models["Country"]
        with app.session() as session, session.begin():
            session.add(country_class(code="NL", name="Netherlands"))
            # The shared Country and the app's User are in different registries: the
            # unit of work cannot order their inserts by the foreign key, so flush first.
            session.flush()
            session.add(user_class(name="ada", country_code="NL"))
        with app.session() as session:
            user = session.scalars(sa.select(user_class)).one()
            assert (user.name, user.country_code) == ("ada", "NL")
            country = session.get(country_class, "NL")
            assert country is not None
            assert country.name == "Netherlands"
        assert app.status()["models"] == 2
        models.drop_all(app.engine)
        assert sa.inspect(app.engine).get_table_names() == []

    def test_two_apps_two_databases(
        self, load: Any, engines: Engines, sql_url: str, tmp_path: Any
    ) -> None:
        """Two apps' copies of one module each work on their own database."""
        shop = load("shop", f"{FIXTURE}.shop")
        desk = load("desk", f"{FIXTURE}.shop")
        shop_engine = engines.open("shop", DatabaseConfig(url=sql_url), None).engine
        desk_engine = engines.open("desk", DatabaseConfig(url="sqlite://"), None).engine
        shop.create_all(shop_engine)
        desk.create_all(desk_engine)
        with sa.orm.Session(shop_engine) as session, session.begin():
            session.add(shop["User"](name="ada"))
        with sa.orm.Session(desk_engine) as session:
            assert session.scalars(sa.select(desk["User"])).all() == []
        with sa.orm.Session(shop_engine) as session:
            assert session.scalars(sa.select(shop["User"].name)).all() == ["ada"]
