//! SQLite stores for secure-routes. (in progress)
