"""API keys: made here, shown once, stored only as a sha256 hash."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .models import ApiKey, User, utcnow

KEY_PREFIX = "cf-"
LOCAL_USER = "local"  # the single user of a keyless server on loopback


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_create_user(session: Session, name: str) -> User:
    name = name.strip()
    if not name:
        raise ValueError("user name must not be empty")
    user = session.scalar(sa.select(User).where(User.name == name))
    if user is None:
        user = User(name=name)
        session.add(user)
        session.flush()
    return user


def create_key(session: Session, user_name: str, label: str | None = None) -> tuple[str, ApiKey]:
    """A new key for `user_name` (the user is created if new). Returns (the key itself, its row);
    the caller shows the key once — it cannot be recovered from the database."""
    user = get_or_create_user(session, user_name)
    key = KEY_PREFIX + secrets.token_urlsafe(32)  # 256 bits: unguessable, so sha256 needs no salt
    row = ApiKey(user_id=user.id, key_hash=hash_key(key), prefix=key[:10], label=label)
    session.add(row)
    session.flush()
    return key, row


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(sa.select(ApiKey).join(ApiKey.user).order_by(ApiKey.id)))


def revoke_key(session: Session, ref: str) -> ApiKey:
    """Revoke by numeric id or by the prefix `keys list` shows."""
    if ref.isdigit():
        row = session.get(ApiKey, int(ref))
        rows = [row] if row else []
    else:
        rows = list(session.scalars(sa.select(ApiKey).where(ApiKey.prefix.startswith(ref))))
    if not rows:
        raise ValueError(f"no API key with id or prefix {ref!r} (see `chatfactory keys list`)")
    if len(rows) > 1:
        raise ValueError(f"prefix {ref!r} matches {len(rows)} keys; give the numeric id instead")
    row = rows[0]
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def active_key_count(session: Session) -> int:
    return session.scalar(sa.select(sa.func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))) or 0


def user_for_key(session: Session, key: str) -> User | None:
    """The user owning an active key, or None. Records last use at most once a minute, so
    a busy client does not turn every request into a write."""
    row = session.scalar(sa.select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)))
    if row is None:
        return None
    now = utcnow()
    last = row.last_used_at
    if last is not None and last.tzinfo is None:  # SQLite returns naive datetimes
        last = last.replace(tzinfo=now.tzinfo)
    if last is None or now - last > timedelta(minutes=1):
        row.last_used_at = now
        session.commit()
    return row.user
