//! Admission: reviews answered from an immutable snapshot of the desired state
//! (`admission`), the HTTPS server and its limits (`server`), the serving certificate
//! reloaded per connection (`tls`).

pub mod admission;
pub mod server;
pub mod tls;
