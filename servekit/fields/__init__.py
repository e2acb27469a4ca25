"""Typed fields of the fleet schema: every value that reaches a shell, a path, a unit, nftables, apt
or a URL has a type here, checked when the inventory loads.

Each type refuses by construction what could change the meaning of the place it lands in (a
newline that starts a new unit directive, a comma that adds an nftables element, `$(...)` inside a
shell string, `..` in a path): the value is checked against the scheme it belongs to, not against
a list of known attacks. Errors carry their fix (`invalid(message, fix)`), so the Problem a user
sees says what to write instead.
"""

from servekit.fields.addresses import Address as Address
from servekit.fields.addresses import check_address as check_address
from servekit.fields.addresses import is_hostname as is_hostname
from servekit.fields.names import BucketName as BucketName
from servekit.fields.names import EnvName as EnvName
from servekit.fields.names import KeyPrefix as KeyPrefix
from servekit.fields.names import Origin as Origin
from servekit.fields.names import Region as Region
from servekit.fields.names import Revision as Revision
from servekit.fields.names import UserName as UserName
from servekit.fields.names import check_bucket as check_bucket
from servekit.fields.names import check_env_name as check_env_name
from servekit.fields.names import check_key_prefix as check_key_prefix
from servekit.fields.names import check_origin as check_origin
from servekit.fields.names import check_region as check_region
from servekit.fields.names import check_revision as check_revision
from servekit.fields.names import check_user as check_user
from servekit.fields.paths import PSEUDO_FILESYSTEMS as PSEUDO_FILESYSTEMS
from servekit.fields.paths import SYSTEM_DIRS as SYSTEM_DIRS
from servekit.fields.paths import ControlPath as ControlPath
from servekit.fields.paths import HostDir as HostDir
from servekit.fields.paths import check_control_path as check_control_path
from servekit.fields.paths import check_host_dir as check_host_dir
from servekit.fields.text import Text as Text
from servekit.fields.text import check_text as check_text
from servekit.fields.text import control_character as control_character
from servekit.fields.urls import ModelName as ModelName
from servekit.fields.urls import ReservationId as ReservationId
from servekit.fields.urls import SubnetId as SubnetId
from servekit.fields.urls import Url as Url
from servekit.fields.urls import check_model_name as check_model_name
from servekit.fields.urls import check_url as check_url
from servekit.fields.versions import KeepAlive as KeepAlive
from servekit.fields.versions import OllamaVersion as OllamaVersion
from servekit.fields.versions import PrometheusDuration as PrometheusDuration
from servekit.fields.versions import check_keep_alive as check_keep_alive
from servekit.fields.versions import check_ollama_version as check_ollama_version
from servekit.fields.versions import check_prometheus_duration as check_prometheus_duration
