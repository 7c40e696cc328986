#![no_std]
// Empty on purpose: the library target lets sticky-user name this crate as a build
// dependency, so cargo rebuilds the object when the programs change.
