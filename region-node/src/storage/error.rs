//! The one place a `sqlx::Error` is classified: what the committer and remote apply do with a
//! failure depends only on its [`StorageError`] variant.

/// A failed statement or transaction on the authoritative tables, classified once. Each variant
/// keeps the database's error, and prints as it.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// PostgreSQL unreachable, the connection broke (I/O, TLS, protocol) or a pool gave none:
    /// retry later. The connection must not be reused: a statement may have been cut short.
    #[error(transparent)]
    Unavailable(sqlx::Error),
    /// A serialization failure (40001), a deadlock (40P01) or a unique key taken (23505): another
    /// writer got there first; the transaction run again reads what it did.
    #[error(transparent)]
    Conflict(sqlx::Error),
    /// The database refused the data: a data exception (class 22) or a constraint (class 23, other
    /// than 23505), or a stored value that does not decode.
    #[error(transparent)]
    Refused(sqlx::Error),
    /// Anything else (a syntax error, a missing column, resources): a bug or the schema, never
    /// charged to the data.
    #[error(transparent)]
    Internal(sqlx::Error),
}

impl StorageError {
    /// The database's error.
    pub fn into_source(self) -> sqlx::Error {
        match self {
            Self::Unavailable(e) | Self::Conflict(e) | Self::Refused(e) | Self::Internal(e) => e,
        }
    }

    /// Whether the connection that reported it must be dropped.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// Whether running the transaction again may succeed at once.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict(_))
    }
}

impl From<sqlx::Error> for StorageError {
    fn from(e: sqlx::Error) -> Self {
        match e.as_database_error().and_then(|d| d.code()) {
            Some(code) if matches!(code.as_ref(), "40001" | "40P01" | "23505") => return Self::Conflict(e),
            Some(code) if code.starts_with("22") || code.starts_with("23") => return Self::Refused(e),
            Some(_) => return Self::Internal(e),
            None => {}
        }
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Self::Unavailable(e),
            sqlx::Error::Decode(_) | sqlx::Error::ColumnDecode { .. } => Self::Refused(e),
            _ => Self::Internal(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::StorageError;

    #[test]
    fn connection_failures_are_unavailable_and_decode_failures_refused() {
        let io = sqlx::Error::Io(std::io::Error::other("reset"));
        assert!(StorageError::from(io).is_unavailable());
        assert!(matches!(StorageError::from(sqlx::Error::PoolTimedOut), StorageError::Unavailable(_)));
        assert!(matches!(StorageError::from(sqlx::Error::Decode("bad".into())), StorageError::Refused(_)));
        assert!(matches!(StorageError::from(sqlx::Error::RowNotFound), StorageError::Internal(_)));
    }
}
