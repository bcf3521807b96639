"""Typed vars (engine/varspec.py, the tables in engine/inventory.py and triton/layout.py): every var tritonfleet
reads is read into one type after Jinja2 rendering, the way Ansible reads such a value; what does not fit is
refused naming host, var, value and what is allowed; the user's own vars pass through untouched."""

import pytest

from tritonfleet.engine import varspec
from tritonfleet.engine.inventory import CONNECTION_VARS, Host
from tritonfleet.errors import InventoryError
from tritonfleet.fleet.run import host_vars
from tritonfleet.triton import layout


def vars_for(**given):
    return host_vars(Host("h", {}, ()), given)


@pytest.mark.parametrize("value, expected", [
    (True, True), ("yes", True), ("Yes", True), (" ON ", True), ("1", True), (1, True), ("t", True), ("y", True),
    (False, False), ("no", False), ("FALSE", False), ("off", False), ("0", False), (0, False), ("f", False),
])
def test_booleans_are_read_as_ansible_reads_them(value, expected):
    assert varspec.BOOLEAN.read(value) is expected


@pytest.mark.parametrize("value", ["maybe", "ture", "2", 2, 0.5, None, [], ""])
def test_anything_else_is_not_a_boolean(value):
    with pytest.raises(ValueError):
        varspec.BOOLEAN.read(value)


@pytest.mark.parametrize("value, expected", [(22, 22), ("2222", 2222), (" 8000 ", 8000), (65535, 65535)])
def test_ports_are_whole_numbers_from_text_or_numbers(value, expected):
    assert varspec.PORT.read(value) == expected


@pytest.mark.parametrize("value", [0, 70000, 22.9, 22.0, True, "abc", "22.9", None, [22]])
def test_a_port_out_of_range_or_of_another_kind_is_refused(value):
    with pytest.raises(ValueError):
        varspec.PORT.read(value)


def test_every_default_has_a_type_and_fits_it():
    assert set(layout.DEFAULT_VARS) <= set(layout.VAR_TYPES)
    for var, default in layout.DEFAULT_VARS.items():
        assert layout.VAR_TYPES[var].read(default) == default, var


def test_text_from_ini_or_jinja_becomes_typed_flags():
    # what an INI `:vars` section or a Jinja2 expression gives: text
    v = vars_for(triton_exit_on_error="false", triton_strict_readiness="No", triton_http_port="9000",
                 triton_log_verbose="2", triton_keep_releases="5", triton_model_control_mode="Explicit")
    args = v["triton_server_args"]
    assert "--exit-on-error=false" in args and "--strict-readiness=false" in args
    assert "--http-port=9000" in args and "--log-verbose=2" in args and "--model-control-mode=explicit" in args
    assert v["triton_keep_releases"] == 5 and v["triton_exit_on_error"] is False


def test_extra_args_as_text_are_split_as_a_shell_would():
    args = vars_for(triton_extra_args="--log-info=true --log-file='/var/log/triton x.log'")["triton_server_args"]
    assert args[-2:] == ["--log-info=true", "--log-file=/var/log/triton x.log"]
    assert vars_for(triton_extra_args=["--log-info=true", 8])["triton_extra_args"] == ["--log-info=true", "8"]
    with pytest.raises(InventoryError, match="No closing quotation"):
        vars_for(triton_extra_args="--log-file='/x")
    with pytest.raises(InventoryError, match="control characters"):
        vars_for(triton_extra_args=["--a\nExecStartPre=/bin/true"])


def test_host_paths_lose_repeated_and_trailing_slashes_and_never_climb():
    assert vars_for(triton_model_repository_path="//srv//models/")["triton_model_repository_path"] == "/srv/models"
    assert "--backend-directory=/opt/tritonserver/backends" in \
        vars_for(triton_backend_directory="/opt/tritonserver/backends//")["triton_server_args"]
    for bad in ("/", "//", "/srv/../", "srv/models", "/srv/m dir", "/srv/$(id)"):
        with pytest.raises(InventoryError, match="triton_model_repository_path"):
            vars_for(triton_model_repository_path=bad)


def test_backend_config_values_are_text_for_the_flag():
    args = vars_for(triton_backend_config={"python": {"shm-default-byte-size": 1048576, "x": True}})
    assert "--backend-config=python,shm-default-byte-size=1048576" in args["triton_server_args"]
    assert "--backend-config=python,x=true" in args["triton_server_args"]
    for bad in ({"python": "x"}, ["python"], {"python": {"a": [1]}}, {"py thon": {"a": 1}}):
        with pytest.raises(InventoryError, match="triton_backend_config"):
            vars_for(triton_backend_config=bad)


def test_the_users_own_vars_pass_through_untouched():
    v = vars_for(my_flag="false", my_port="abc", my_list="a b")
    assert (v["my_flag"], v["my_port"], v["my_list"]) == ("false", "abc", "a b")


def test_an_error_names_host_var_value_allowed_and_where_it_was_set():
    host = Host("gpu01", {"triton_http_port": "abc"}, (), origins={"triton_http_port": ("hosts.yml", 7)})
    with pytest.raises(InventoryError) as err:
        host_vars(host, {})
    assert (err.value.file, err.value.line) == ("hosts.yml", 7)
    assert "host gpu01: triton_http_port is 'abc': not a whole number" in str(err.value)
    assert "port number from 1 to 65535" in err.value.hint


def test_a_command_line_var_is_not_blamed_on_the_inventory():
    host = Host("gpu01", {"model_repository": "/ok"}, (), origins={"model_repository": ("hosts.yml", 3)})
    with pytest.raises(InventoryError) as err:
        host_vars(host, {"model_repository": 1.5})
    assert err.value.file is None and "model_repository is 1.5" in str(err.value)


def test_connection_vars_are_typed_too():
    v = varspec.checked_vars({"ansible_port": "2222", "ansible_become": "yes", "tritonfleet_secret_vars": "a, b",
                              "tritonfleet_host_key_policy": "Accept-New"}, CONNECTION_VARS, "h", {})
    assert v == {"ansible_port": 2222, "ansible_become": True, "tritonfleet_secret_vars": ["a", "b"],
                 "tritonfleet_host_key_policy": "accept-new"}
    with pytest.raises(InventoryError, match="tritonfleet_host_key_policy is 'sometimes'"):
        varspec.checked_vars({"tritonfleet_host_key_policy": "sometimes"}, CONNECTION_VARS, "h", {})
