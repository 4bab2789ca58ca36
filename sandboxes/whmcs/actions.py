"""The WHMCS API actions the sandbox speaks, with WHMCS's own error messages (domain.md §2).

Where real WHMCS silently coerces (it casts `amount` to a PHP float), the sandbox is stricter
and refuses: an amount that is not a plain decimal string, or has more decimal places than the
client's currency allows, is an error here. That is a tripwire for the client, not WHMCS
behaviour. Numbers go out as strings, the way WHMCS sends many of them, so callers must coerce.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from datetime import date
from decimal import Decimal

from autobill.money import minor_units
from sandboxes.whmcs.phpser import PhpFormatError, php_unserialize
from sandboxes.whmcs.store import CURRENCIES, CUSTOM_FIELDS, Store, money_text, now_text

_DECIMAL = re.compile(r"^-?[0-9]{1,16}(\.[0-9]{1,12})?$")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_FIELD_IDS = sorted(CUSTOM_FIELDS.values())
_CLIENT_ORDER = ("id", "firstname", "lastname", "companyname", "email", "groupid", "datecreated", "status")
_INVOICE_ORDER = ("id", "invoicenum", "date", "duedate", "total", "status")


class ApiError(Exception):
    """Becomes {"result": "error", "message": ...}."""


def _int(value: str | None) -> int | None:
    try:
        return int(str(value).strip()) if value not in (None, "") else None
    except ValueError:
        return None


def _flag(value: str | None) -> bool:
    return str(value or "").strip().lower() in ("1", "on", "yes", "true")


def _page(p: dict[str, str]) -> tuple[int, int]:
    start = max(0, _int(p.get("limitstart")) or 0)
    num = _int(p.get("limitnum"))
    return start, 25 if num is None or num <= 0 else num


def _paged(total: int, start: int, items: list[dict], outer: str, inner: str) -> dict:
    return {
        "result": "success", "totalresults": str(total), "startnumber": str(start),
        "numreturned": str(len(items)), outer: {inner: items},
    }


def _fmt(amount: Decimal | str, ccy: str) -> str:
    prefix, suffix = CURRENCIES.get(ccy, ("", f" {ccy}"))
    return f"{prefix}{money_text(amount)}{suffix}"


class Api:
    def __init__(self, store: Store, legacy_hours: bool = False) -> None:
        self.store = store
        self.legacy_hours = legacy_hours
        self.actions: dict[str, Callable[[dict[str, str]], dict]] = {
            "addbillableitem": self.add_billable_item,
            "getclientsdetails": self.get_clients_details,
            "getclients": self.get_clients,
            "getclientsproducts": self.get_clients_products,
            "getinvoices": self.get_invoices,
            "getinvoice": self.get_invoice,
            "getautomationlog": self.get_automation_log,
            "modulesuspend": self.module_suspend,
            "moduleunsuspend": self.module_unsuspend,
            "updateclientproduct": self.update_client_product,
            "sendemail": self.send_email,
            "sendadminemail": self.send_admin_email,
            "addcredit": self.add_credit,
            "getcredits": self.get_credits,
        }

    def dispatch(self, p: dict[str, str]) -> dict:
        handler = self.actions.get(p.get("action", "").lower())
        if handler is None:
            raise ApiError("Command Not Found")
        return handler(p)

    # -- AddBillableItem ---------------------------------------------------------------------

    def add_billable_item(self, p: dict[str, str]) -> dict:
        conn = self.store.conn()
        row = conn.execute("SELECT id, currency FROM clients WHERE id = ?", (_int(p.get("clientid")) or 0,)).fetchone()
        if row is None:
            raise ApiError("Client ID not Found")
        description = p.get("description", "")
        if not description.strip():
            raise ApiError("You must provide a description")
        action = p.get("invoiceaction", "") or "noinvoice"
        if action not in ("noinvoice", "nextcron", "nextinvoice", "duedate", "recur"):
            raise ApiError("Invalid Invoice Action")
        recur, recurfor, cycle = _int(p.get("recur")), _int(p.get("recurfor")), p.get("recurcycle", "")
        if action == "recur" and ((not recur and not cycle) or not recurfor):
            raise ApiError("Recurring must have a unit, cycle and limit")
        duedate = p.get("duedate", "")
        if action in ("duedate", "recur") and not duedate:
            raise ApiError("Due date is required")
        if duedate and not _valid_date(duedate):
            raise ApiError("Invalid Date Format - Expected: 'YYYY-mm-dd'")
        if action == "nextcron" and not duedate:
            duedate = date.today().isoformat()
        if self.legacy_hours:
            unit, quantity = "hours", p.get("hours", "") or "0"
        else:
            unit, quantity = p.get("unit", ""), p.get("quantity", "") or "0"
            if unit not in ("hours", "quantity"):
                raise ApiError("Invalid Unit, please specify either 'hours' or 'quantity'")
        amount = p.get("amount", "")
        if not _DECIMAL.match(amount) or not _DECIMAL.match(quantity):
            raise ApiError("Amount must be in decimal format: ### or ###.##")
        places = minor_units(row["currency"])
        if Decimal(amount) != Decimal(amount).quantize(Decimal(1).scaleb(-places)):
            raise ApiError(f"Amount has more than {places} decimal places (sandbox check)")
        with self.store.tx() as c:
            cur = c.execute(
                "INSERT INTO billable_items (userid, description, amount, unit, quantity, invoiceaction, duedate,"
                " recur, recurcycle, recurfor, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (row["id"], description, amount, unit, quantity, action, duedate, recur or 0, cycle, recurfor or 0,
                 now_text()),
            )
        return {"result": "success", "billableid": int(cur.lastrowid)}

    # -- clients -----------------------------------------------------------------------------

    def get_clients_details(self, p: dict[str, str]) -> dict:
        conn = self.store.conn()
        cid, email = _int(p.get("clientid")), p.get("email", "")
        if cid is None and not email:
            raise ApiError("Either clientid Or email Is Required")
        if cid is not None:
            row = conn.execute("SELECT * FROM clients WHERE id = ?", (cid,)).fetchone()
        else:
            row = conn.execute("SELECT * FROM clients WHERE email = ? ORDER BY id LIMIT 1", (email,)).fetchone()
        if row is None:
            raise ApiError("Client Not Found")
        client = _client_object(row)
        out = {"result": "success", "userid": client["id"], "id": client["id"], "client": client}
        if _flag(p.get("stats")):
            out["stats"] = self._stats(row)
        return out

    def _stats(self, row) -> dict:
        conn, ccy, today = self.store.conn(), row["currency"], date.today().isoformat()
        unpaid = due = overdue = Decimal(0)
        n_unpaid = n_due = n_overdue = n_paid = 0
        paid = Decimal(0)
        for inv in conn.execute("SELECT status, total, balance, duedate FROM invoices WHERE userid = ?", (row["id"],)):
            if inv["status"] == "Unpaid":
                n_unpaid += 1
                unpaid += Decimal(inv["balance"])
                n_due += 1
                due += Decimal(inv["balance"])
                if inv["duedate"] < today:
                    n_overdue += 1
                    overdue += Decimal(inv["balance"])
            elif inv["status"] == "Paid":
                n_paid += 1
                paid += Decimal(inv["total"])
        (active,) = conn.execute(
            "SELECT COUNT(*) FROM products WHERE clientid = ? AND status = 'Active'", (row["id"],)
        ).fetchone()
        return {
            "creditbalance": _fmt(row["credit"], ccy), "incredit": Decimal(row["credit"]) > 0,
            "numdueinvoices": str(n_due), "dueinvoicesbalance": _fmt(due, ccy),
            "numoverdueinvoices": str(n_overdue), "overdueinvoicesbalance": _fmt(overdue, ccy),
            "numunpaidinvoices": str(n_unpaid), "unpaidinvoicesamount": _fmt(unpaid, ccy),
            "numpaidinvoices": str(n_paid), "paidinvoicesamount": _fmt(paid, ccy),
            "productsnumactive": str(active),
        }

    def get_clients(self, p: dict[str, str]) -> dict:
        where, args = ["1 = 1"], []
        if p.get("status"):
            where.append("status = ?")
            args.append(p["status"])
        if p.get("search"):
            where.append("(email LIKE ? OR firstname LIKE ? OR lastname LIKE ? OR companyname LIKE ?)")
            args.extend([f"%{p['search']}%"] * 4)
        order = p.get("orderby", "id") if p.get("orderby", "id") in _CLIENT_ORDER else "id"
        direction = "DESC" if p.get("sorting", "").upper() == "DESC" else "ASC"
        start, num = _page(p)
        conn, cond = self.store.conn(), " AND ".join(where)
        (total,) = conn.execute(f"SELECT COUNT(*) FROM clients WHERE {cond}", args).fetchone()  # noqa: S608 - fixed fragments
        rows = conn.execute(
            f"SELECT id, firstname, lastname, companyname, email, datecreated, groupid, status FROM clients"  # noqa: S608
            f" WHERE {cond} ORDER BY {order} {direction}, id LIMIT ? OFFSET ?",
            [*args, num, start],
        ).fetchall()
        items = [{**dict(r), "id": str(r["id"]), "groupid": str(r["groupid"])} for r in rows]
        return _paged(total, start, items, "clients", "client")

    # -- services ----------------------------------------------------------------------------

    def get_clients_products(self, p: dict[str, str]) -> dict:
        where, args = ["1 = 1"], []
        for param, column in (("clientid", "clientid"), ("serviceid", "id"), ("pid", "pid")):
            value = _int(p.get(param))
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if p.get("domain"):
            where.append("domain = ?")
            args.append(p["domain"])
        start, num = _page(p)
        conn, cond = self.store.conn(), " AND ".join(where)
        (total,) = conn.execute(f"SELECT COUNT(*) FROM products WHERE {cond}", args).fetchone()  # noqa: S608
        rows = conn.execute(
            f"SELECT * FROM products WHERE {cond} ORDER BY id LIMIT ? OFFSET ?", [*args, num, start]  # noqa: S608
        ).fetchall()
        servers = {r["id"]: r for r in conn.execute("SELECT id, name, hostname FROM servers")}
        field_ids = {(r["pid"], r["name"]): r["id"] for r in conn.execute("SELECT id, pid, name FROM product_fields")}
        items = [_with_service_fields(_product_object(r), r, servers, field_ids) for r in rows]
        return _paged(total, start, items, "products", "product")

    def _service(self, p: dict[str, str]):
        sid = _int(p.get("serviceid") or p.get("accountid"))
        if sid is None:
            raise ApiError("Service ID is required")
        row = self.store.conn().execute("SELECT id, module FROM products WHERE id = ?", (sid,)).fetchone()
        if row is None:
            raise ApiError("Service ID not found")
        return row

    def module_suspend(self, p: dict[str, str]) -> dict:
        row = self._service(p)
        if not row["module"]:
            raise ApiError("Service not assigned to a module")
        reason = p.get("suspendreason", "")
        with self.store.tx() as c:
            c.execute("UPDATE products SET status = 'Suspended', suspensionreason = ? WHERE id = ?", (reason, row["id"]))
            c.execute("INSERT INTO module_calls (action, serviceid, reason, at) VALUES ('ModuleSuspend', ?, ?, ?)",
                      (row["id"], reason, now_text()))
        return {"result": "success"}

    def module_unsuspend(self, p: dict[str, str]) -> dict:
        row = self._service(p)
        if not row["module"]:
            raise ApiError("Service not assigned to a module")
        with self.store.tx() as c:
            c.execute("UPDATE products SET status = 'Active', suspensionreason = '' WHERE id = ?", (row["id"],))
            c.execute("INSERT INTO module_calls (action, serviceid, reason, at) VALUES ('ModuleUnsuspend', ?, '', ?)",
                      (row["id"], now_text()))
        return {"result": "success"}

    def update_client_product(self, p: dict[str, str]) -> dict:
        sid = _int(p.get("serviceid"))
        if sid is None:
            raise ApiError("Service ID is required")
        if self.store.conn().execute("SELECT 1 FROM products WHERE id = ?", (sid,)).fetchone() is None:
            raise ApiError("Service ID Not Found")
        changes: dict[str, object] = {}
        for param in ("status", "domain", "notes", "nextduedate", "overidesuspenduntil"):
            if param in p:
                changes[param] = p[param]
        if "suspendreason" in p:
            changes["suspensionreason"] = p["suspendreason"]
        if "overideautosuspend" in p:
            changes["overideautosuspend"] = int(_flag(p["overideautosuspend"]))
        if "recurringamount" in p:
            if not _DECIMAL.match(p["recurringamount"]):
                raise ApiError("Amount must be in decimal format: ### or ###.##")
            changes["recurringamount"] = money_text(p["recurringamount"])
        if changes:
            sets = ", ".join(f"{k} = ?" for k in changes)  # keys come from the fixed lists above
            with self.store.tx() as c:
                c.execute(f"UPDATE products SET {sets} WHERE id = ?", [*changes.values(), sid])  # noqa: S608
        return {"result": "success", "serviceid": sid}

    # -- invoices ----------------------------------------------------------------------------

    def get_invoices(self, p: dict[str, str]) -> dict:
        where, args = ["1 = 1"], []
        uid = _int(p.get("userid"))
        if uid is not None:
            where.append("i.userid = ?")
            args.append(uid)
        status = p.get("status", "")
        if status.lower() == "overdue":
            where.append("i.status = 'Unpaid' AND i.duedate < ?")
            args.append(date.today().isoformat())
        elif status:
            where.append("i.status = ?")
            args.append(status)
        order = p.get("orderby", "id") if p.get("orderby", "id") in _INVOICE_ORDER else "id"
        direction = "DESC" if p.get("order", "").lower() == "desc" else "ASC"
        start, num = _page(p)
        conn, cond = self.store.conn(), " AND ".join(where)
        (total,) = conn.execute(f"SELECT COUNT(*) FROM invoices i WHERE {cond}", args).fetchone()  # noqa: S608
        rows = conn.execute(
            "SELECT i.*, c.firstname, c.lastname, c.companyname, c.currency FROM invoices i"  # noqa: S608
            f" LEFT JOIN clients c ON c.id = i.userid WHERE {cond} ORDER BY i.{order} {direction}, i.id"
            " LIMIT ? OFFSET ?",
            [*args, num, start],
        ).fetchall()
        return _paged(total, start, [_invoice_object(r) for r in rows], "invoices", "invoice")

    def get_invoice(self, p: dict[str, str]) -> dict:
        conn = self.store.conn()
        row = conn.execute("SELECT * FROM invoices WHERE id = ?", (_int(p.get("invoiceid")) or 0,)).fetchone()
        if row is None:
            raise ApiError("Invoice ID Not Found")
        items = [
            {"id": str(i["id"]), "type": i["type"] or "", "relid": str(i["relid"] or 0), "description": i["description"],
             "amount": i["amount"], "taxed": str(i["taxed"] or 0)}
            for i in conn.execute("SELECT * FROM invoice_items WHERE invoiceid = ? ORDER BY id", (row["id"],))
        ]
        return {
            "result": "success", "invoiceid": str(row["id"]), "invoicenum": row["invoicenum"] or "",
            "userid": str(row["userid"]), "date": row["date"], "duedate": row["duedate"], "datepaid": row["datepaid"],
            "subtotal": row["subtotal"], "credit": row["credit"], "tax": row["tax"], "tax2": "0.00",
            "total": row["total"], "balance": row["balance"], "taxrate": "0.00", "taxrate2": "0.00",
            "status": row["status"], "paymentmethod": row["paymentmethod"], "notes": "", "ccgateway": False,
            "items": {"item": items}, "transactions": "",
        }

    # -- GetAutomationLog --------------------------------------------------------------------

    def get_automation_log(self, p: dict[str, str]) -> dict:
        """Times are the WHMCS server's local wall clock, without an offset (as real WHMCS sends them)."""
        today = self.store.local_now().date().isoformat()
        start, end = p.get("startdate") or today, p.get("enddate") or today
        for value in (start, end):
            if not _valid_date(value[:10]):
                raise ApiError("Invalid Date Format - Expected: 'YYYY-mm-dd'")
        conn = self.store.conn()
        last = conn.execute("SELECT started FROM automation_log ORDER BY started DESC, id DESC LIMIT 1").fetchone()
        stats: dict[str, dict] = {}
        for r in conn.execute("SELECT * FROM automation_log WHERE substr(started, 1, 10) BETWEEN ? AND ? ORDER BY id",
                              (start[:10], end[:10])):
            day = stats.setdefault(r["started"][:10], {"CreateInvoices": {"invoice.created": 0, "item.invoiced": 0}})
            day["CreateInvoices"]["invoice.created"] += r["invoices"]
            day["CreateInvoices"]["item.invoiced"] += r["items"]
        return {
            "result": "success", "currentDatetime": self.store.local_now().strftime("%Y-%m-%d %H:%M:%S"),
            "lastDailyCronInvocationTime": last["started"] if last else "",
            "startdate": f"{start[:10]} 00:00:00", "enddate": f"{end[:10]} 23:59:59", "statistics": stats,
        }

    # -- SendEmail ---------------------------------------------------------------------------

    def send_email(self, p: dict[str, str]) -> dict:
        name = p.get("messagename", "")
        if not name and not p.get("customtype"):
            raise ApiError("You must provide either an existing email template name or a custom message type")
        relid = p.get("id", "")
        if not relid or not relid.strip().isdigit():
            raise ApiError("A related ID is required")
        conn = self.store.conn()
        tpl = conn.execute("SELECT type, disabled FROM email_templates WHERE name = ?", (name,)).fetchone()
        if tpl is None:
            raise ApiError("Email Template not found")
        if tpl["disabled"]:
            raise ApiError("Email Template is disabled")
        table = {"general": "clients", "product": "products", "invoice": "invoices"}.get(tpl["type"], "clients")
        if conn.execute(f"SELECT 1 FROM {table} WHERE id = ?", (int(relid),)).fetchone() is None:  # noqa: S608
            raise ApiError("Sending Failed. Please see documentation.")
        custom: object = {}
        if p.get("customvars"):
            try:
                custom = php_unserialize(base64.b64decode(p["customvars"], validate=True).decode("utf-8"))
            except (binascii.Error, UnicodeDecodeError, PhpFormatError, ValueError, IndexError):
                raise ApiError("Sending Failed. Please see documentation.") from None
        with self.store.tx() as c:
            c.execute("INSERT INTO emails (messagename, relid, customvars, at) VALUES (?, ?, ?, ?)",
                      (name, int(relid), json.dumps(custom), now_text()))
        return {"result": "success"}

    def send_admin_email(self, p: dict[str, str]) -> dict:
        """SendAdminEmail: a template (`messagename`) or `customsubject` + `custommessage` to the
        admins; recorded in `emails` with relid 0 and messagename `admin:<subject or template>`."""
        subject = p.get("customsubject", "") or p.get("messagename", "")
        if not subject:
            raise ApiError("You must provide either an existing email template name or a custom subject")
        body = {"message": p.get("custommessage", ""), "type": p.get("type", "system")}
        with self.store.tx() as c:
            c.execute("INSERT INTO emails (messagename, relid, customvars, at) VALUES (?, 0, ?, ?)",
                      (f"admin:{subject}", json.dumps(body), now_text()))
        return {"result": "success"}

    # -- AddCredit / GetCredits (domain.md §2.10) --------------------------------------------

    def add_credit(self, p: dict[str, str]) -> dict:
        """Add (or with type=remove take) credit; the description is the admin note in the credit log."""
        conn = self.store.conn()
        row = conn.execute("SELECT id, credit, currency FROM clients WHERE id = ?",
                           (_int(p.get("clientid")) or 0,)).fetchone()
        if row is None:
            raise ApiError("Client ID Not Found")
        amount = p.get("amount", "")
        if not _DECIMAL.match(amount) or amount.startswith("-"):
            raise ApiError("Amount must be in decimal format: ### or ###.##")
        places = minor_units(row["currency"])
        if Decimal(amount) != Decimal(amount).quantize(Decimal(1).scaleb(-places)):
            raise ApiError(f"Amount has more than {places} decimal places (sandbox check)")
        kind = p.get("type", "") or "add"
        if kind not in ("add", "remove"):
            raise ApiError("Invalid Type")
        day = p.get("date", "") or date.today().isoformat()
        if not _valid_date(day):
            raise ApiError("Invalid Date Format - Expected: 'YYYY-mm-dd'")
        signed = Decimal(amount) if kind == "add" else -Decimal(amount)
        with self.store.tx() as c:
            (credit,) = c.execute("SELECT credit FROM clients WHERE id = ?", (row["id"],)).fetchone()
            balance = Decimal(credit) + signed
            c.execute("UPDATE clients SET credit = ? WHERE id = ?", (money_text(balance), row["id"]))
            c.execute("INSERT INTO credits (clientid, date, description, amount, relid, type) VALUES (?, ?, ?, ?, 0, ?)",
                      (row["id"], day, p.get("description", ""), money_text(signed), kind))
        return {"result": "success", "newbalance": money_text(balance)}

    def get_credits(self, p: dict[str, str]) -> dict:
        cid = _int(p.get("clientid"))
        if cid is None or self.store.conn().execute("SELECT 1 FROM clients WHERE id = ?", (cid,)).fetchone() is None:
            raise ApiError("Client ID Not Found")
        rows = self.store.conn().execute("SELECT * FROM credits WHERE clientid = ? ORDER BY id", (cid,)).fetchall()
        items = [{"id": str(r["id"]), "date": r["date"], "description": r["description"], "amount": r["amount"],
                  "relid": str(r["relid"])} for r in rows]
        return {"result": "success", "totalresults": str(len(items)), "clientid": str(cid),
                "credits": {"credit": items}}


def _valid_date(text: str) -> bool:
    if not _DATE.match(text):
        return False
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _client_object(row) -> dict:
    fields = json.loads(row["customfields"] or "{}")
    custom = [{"id": fid, "value": fields.get(str(fid), "")} for fid in _FIELD_IDS]
    cid = row["id"]
    client = {
        "userid": cid, "client_id": cid, "id": cid, "uuid": row["uuid"], "firstname": row["firstname"],
        "lastname": row["lastname"], "fullname": f"{row['firstname']} {row['lastname']}".strip(),
        "companyname": row["companyname"], "email": row["email"], "status": row["status"],
        "credit": row["credit"], "currency": "1", "currency_code": row["currency"], "groupid": str(row["groupid"]),
        "language": "", "datecreated": row["datecreated"], "customfields": custom,
    }
    for i, item in enumerate(custom, 1):
        client[f"customfields{i}"] = item["value"]
    return client


def _product_object(r) -> dict:
    return {
        "id": str(r["id"]), "clientid": str(r["clientid"]), "orderid": str(r["orderid"]), "pid": str(r["pid"]),
        "regdate": r["regdate"], "name": r["name"], "translated_name": r["name"], "groupname": r["groupname"],
        "domain": r["domain"], "serverid": "0", "servername": "", "serverhostname": "", "username": "",
        "status": r["status"], "suspensionreason": r["suspensionreason"], "billingcycle": r["billingcycle"],
        "nextduedate": r["nextduedate"], "recurringamount": r["recurringamount"],
        "overideautosuspend": str(r["overideautosuspend"]), "overidesuspenduntil": r["overidesuspenduntil"],
        "notes": r["notes"], "customfields": {"customfield": []}, "configoptions": {"configoption": []},
    }


def _with_service_fields(obj: dict, r, servers: dict, field_ids: dict) -> dict:
    """Server assignment, Dedicated IP and product custom fields, shaped as WHMCS returns them:
    `customfields: {customfield: [{id, name, translated_name, value}]}` in field-id order."""
    keys = r.keys()
    server = servers.get(r["serverid"]) if "serverid" in keys else None
    fields = json.loads(r["customfields"] or "{}") if "customfields" in keys else {}
    custom = sorted(({"id": str(field_ids.get((r["pid"], name), 0)), "name": name, "translated_name": name,
                      "value": value} for name, value in fields.items()), key=lambda f: int(f["id"]))
    obj.update({
        "serverid": str(r["serverid"] or 0) if "serverid" in keys else "0",
        "servername": server["name"] if server else "", "serverhostname": server["hostname"] if server else "",
        "dedicatedip": r["dedicatedip"] or "" if "dedicatedip" in keys else "",
        "customfields": {"customfield": custom},
    })
    return obj


def _invoice_object(r) -> dict:
    prefix, suffix = CURRENCIES.get(r["currency"] or "USD", ("", ""))
    return {
        "id": str(r["id"]), "userid": str(r["userid"]), "firstname": r["firstname"] or "",
        "lastname": r["lastname"] or "", "companyname": r["companyname"] or "", "invoicenum": r["invoicenum"],
        "date": r["date"], "duedate": r["duedate"], "datepaid": r["datepaid"], "subtotal": r["subtotal"],
        "credit": r["credit"], "tax": r["tax"], "tax2": "0.00", "total": r["total"], "balance": r["balance"],
        "taxrate": "0.00", "taxrate2": "0.00", "status": r["status"], "paymentmethod": r["paymentmethod"],
        "notes": "", "currencycode": r["currency"] or "USD", "currencyprefix": prefix, "currencysuffix": suffix,
    }
