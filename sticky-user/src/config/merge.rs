//! One layer of settings over another (flags over the file): each kind of value merges one
//! way, and a layer merges field by field.

use std::collections::BTreeMap;

/// `self` over `base`: what is set here wins.
pub trait Merge {
    fn over(self, base: Self) -> Self;
}

impl<T> Merge for Option<T> {
    fn over(self, base: Self) -> Self {
        self.or(base)
    }
}

/// A list given here replaces the base's whole list.
impl<T> Merge for Vec<T> {
    fn over(self, base: Self) -> Self {
        if self.is_empty() { base } else { self }
    }
}

/// Entries here replace the base's entries with the same key; the others stay.
impl<K: Ord, V> Merge for BTreeMap<K, V> {
    fn over(self, base: Self) -> Self {
        let mut merged = base;
        merged.extend(self);
        merged
    }
}

/// `over` for a layer struct, field by field: nested layers merge by their own `over`, values
/// by [`Merge`]. The struct literal names every field, so a field missing from the list does not
/// compile.
macro_rules! merge_fields {
    ($layer:ident { $($field:ident),* $(,)? }) => {
        impl $layer {
            /// `self` over `base`: what is set here wins; a list here replaces the base's.
            pub fn over(self, base: Self) -> Self {
                use $crate::config::Merge as _;
                $layer {
                    $($field: self.$field.over(base.$field),)*
                }
            }
        }
    };
}
pub(crate) use merge_fields;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_values_win_and_lists_replace_whole() {
        assert_eq!(Some(1).over(Some(2)), Some(1));
        assert_eq!(None.over(Some(2)), Some(2));
        assert_eq!(vec![1].over(vec![2, 3]), [1]);
        assert_eq!(Vec::new().over(vec![2, 3]), [2, 3]);
        let map = |kv: &[(u8, u8)]| kv.iter().copied().collect::<BTreeMap<_, _>>();
        assert_eq!(
            map(&[(1, 10)]).over(map(&[(1, 0), (2, 20)])),
            map(&[(1, 10), (2, 20)])
        );
    }
}
