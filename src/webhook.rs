//! Admission: reviews answered from an immutable snapshot of the desired state
//! (`admission`), the HTTPS server and its limits (`server`), the serving certificate
//! reloaded per connection (`tls`), request bodies reserved as they arrive (`bodies`), the
//! connections of both ports and their deadlines (`conns`).

pub mod admission;
pub mod bodies;
pub mod conns;
pub mod server;
pub mod tls;
